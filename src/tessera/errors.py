"""The one exception tree of Tessera.

Every error a user can cause names the thing at fault (file, config, entry, GPU, field) and
what to do about it. Whether retrying can help is part of the type, so callers (the CLI's
exit codes, the agent's state machine) decide by class, never by parsing messages::

    TesseraError
    ├── PermanentError            retrying the same input cannot help
    │   ├── ConfigError           bad config file, entry, label or flag value
    │   │   ├── MigConfigError    a mig-parted v1 config that cannot apply to this node
    │   │   └── PluginConfigError a device plugin config v1 that is invalid or cannot apply
    │   ├── UnsupportedError      the hardware cannot do what was asked (MIG on a non-MIG GPU)
    │   ├── ClaimError            a DRA ResourceClaim this node cannot prepare as written
    │   └── SimulatorError        a bad simulator preset, state file or sim command
    └── TemporaryError            may succeed later (back off, retry)
        ├── HardwareError         an NVML call failed; carries the NVML code and the GPU
        │   └── GpuBusyError      processes hold a GPU or MIG device (names the PIDs)
        └── ApplyError            an apply stopped part-way; says what was done

This module sits below every layer: any part of Tessera may import it.
"""

from __future__ import annotations

from collections.abc import Sequence


def _located(reason: str, source: str | None, **where: object) -> str:
    """`file, config 'x', entry 2, GPU 1: reason`: where first, then what is wrong."""
    parts = [source] if source is not None else []
    for label, value in where.items():
        if value is not None:
            parts.append(f"{label} {value!r}" if isinstance(value, str) else f"{label} {value}")
    return f"{', '.join(parts)}: {reason}" if parts else reason


class TesseraError(Exception):
    """Base of every error Tessera raises on purpose."""


class PermanentError(TesseraError):
    """Retrying with the same input cannot help; a person has to change something."""


class TemporaryError(TesseraError):
    """The same request may succeed later (a busy GPU, a flaky call)."""


class ConfigError(PermanentError):
    """A config file, entry, label or flag value is wrong."""


class MigConfigError(ConfigError):
    """A mig-parted v1 config that cannot be read or cannot apply to this node.

    The message always says which file, config, entry and GPU, then the reason.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        config: str | None = None,
        entry: int | None = None,
        gpu: int | None = None,
    ) -> None:
        self.reason = reason
        self.source = source
        self.config = config
        self.entry = entry
        self.gpu = gpu
        super().__init__(_located(reason, source, config=config, entry=entry, GPU=gpu))


class PluginConfigError(ConfigError):
    """A device plugin config (NVIDIA's v1 format) that is invalid or cannot apply to this node.

    The message says which file, which named config and which field, then the reason.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        config: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.source = source
        self.config = config
        self.field = field
        super().__init__(_located(reason, source, config=config, field=field))


class UnsupportedError(PermanentError):
    """The hardware cannot do what was asked."""


class ClaimError(PermanentError):
    """A DRA ResourceClaim that cannot be prepared as written: a bad opaque config, a sharing
    strategy Tessera does not know, a device this node does not have. Says which claim."""


class SimulatorError(PermanentError):
    """A bad simulator preset, state file or `tessera sim` command."""


class HardwareError(TemporaryError):
    """An NVML call failed. `code` is the NVML return code, `gpu` the GPU index if known."""

    def __init__(self, message: str, *, code: int | None = None, gpu: int | None = None) -> None:
        self.code = code
        self.gpu = gpu
        super().__init__(message)


class GpuBusyError(HardwareError):
    """Processes hold a GPU or MIG device, so it cannot be reset or destroyed."""

    def __init__(self, message: str, *, device: str, pids: Sequence[int], gpu: int | None) -> None:
        self.device = device
        self.pids = tuple(pids)
        super().__init__(message, gpu=gpu)


class ApplyError(TemporaryError):
    """An apply stopped part-way. `done` lists the steps that took effect before the failure."""

    def __init__(self, message: str, *, done: Sequence[object], failed: object | None) -> None:
        self.done = tuple(done)
        self.failed = failed
        super().__init__(message)
