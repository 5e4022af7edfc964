"""Which devices get rows: dcgm-exporter's `-d/--devices` (pure).

- `f` (the default, "flexible"): per GPU, one row for a GPU not in MIG mode (or in MIG mode
  with no instance yet), and one row per GPU instance for a GPU in MIG mode — never both, so
  `sum by (gpu) (DCGM_FI_DEV_FB_USED)` counts each MiB once. GPU-wide fields (temperature,
  power, clocks, ...) repeat the GPU's value on each of its instances' rows, as DCGM reports
  them for a GPU-instance entity.
- `g`: one row per GPU, MIG or not, with the whole GPU's values (no instance rows).
- `i`: one row per GPU instance; GPUs not in MIG mode have none.
- `g:0,2-3`: `g` for the GPUs with those indices only.

dcgm-exporter's `i:<ids>` names DCGM's GPU-instance entity IDs, which exist only inside a DCGM
host engine; Tessera reads NVML and refuses that form with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tessera.errors import ConfigError
from tessera.hardware.telemetry import GpuSample

Kind = Literal["f", "g", "i"]
Rows = Literal["gpu", "instances", "none"]
MAX_GPU_INDEX = 1023  # far above any node (NVML counts at most 64 GPUs today)


@dataclass(frozen=True, slots=True)
class Devices:
    """A parsed `--devices` value."""

    kind: Kind = "f"
    gpus: frozenset[int] | None = None  # None: every GPU

    def rows(self, gpu: GpuSample) -> Rows:
        """Which rows this GPU gets."""
        if self.gpus is not None and gpu.gpu.index not in self.gpus:
            return "none"
        if self.kind == "g":
            return "gpu"
        in_mig = gpu.mig_enabled and bool(gpu.gpu_instances)
        if self.kind == "i":
            return "instances" if in_mig else "none"
        return "instances" if in_mig else "gpu"

    def __str__(self) -> str:
        """As given on the command line: `f`, `i`, `g` or `g:0,2-3`."""
        if self.gpus is None:
            return self.kind
        ranges: list[str] = []
        for index in sorted(self.gpus):
            if ranges and ranges[-1].split("-")[-1] == str(index - 1):
                ranges[-1] = f"{ranges[-1].split('-')[0]}-{index}"
            else:
                ranges.append(str(index))
        return f"{self.kind}:{','.join(ranges)}"

    def covers(self, index: int) -> bool:
        """Whether a GPU with this index may have rows at all."""
        return self.gpus is None or index in self.gpus


FLEXIBLE = Devices()


def parse_devices(text: str) -> Devices:
    """`f`, `g`, `i` or `g:<indices>` (`0,2-3`); anything else is a `ConfigError`."""
    value = text.strip()
    if value in ("f", "g", "i"):
        return Devices(value)  # type: ignore[arg-type]  # narrowed by the test above
    kind, colon, ids = value.partition(":")
    if colon and kind == "g":
        return Devices("g", _indices(ids, text))
    if colon and kind == "i":
        raise ConfigError(
            f"--devices {text!r}: `i:<ids>` names DCGM's GPU-instance entity IDs, which only "
            "a DCGM host engine has; use `i` (every GPU instance) or `g:<GPU indices>`")
    raise ConfigError(f"--devices {text!r}: give f (GPU instances on MIG GPUs, else GPUs), g "
                      "(GPUs), i (GPU instances) or g:<indices> such as g:0,2-3")


def _indices(ids: str, text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in ids.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ConfigError(f"--devices {text!r}: {part.strip()!r} is not a GPU index or a "
                              "range such as 2-3") from None
        if not 0 <= first <= last <= MAX_GPU_INDEX:
            raise ConfigError(f"--devices {text!r}: {part.strip()!r} is not a range of GPU "
                              f"indices between 0 and {MAX_GPU_INDEX}, low to high")
        found.update(range(first, last + 1))
    return frozenset(found)
