"""Values on the node the agent cannot use, reported on the node itself.

A garbage `tessera.dev/gpu.disable`, or a `nvidia.com/device-plugin.config` that names no
config, is seen by whoever wrote it only if the node says so: a local status file is read
by nobody who runs kubectl. Each such input has an error annotation (`keys.py`: the input's
name with `.error`, under `tessera.dev/`) that holds the reason while the value cannot be
used and is removed once it can, and a Warning Event when a new reason appears. (A bad MIG
input — `nvidia.com/mig.config`, `tessera.dev/mig.layout` — is the MIG state machine's:
`nvidia.com/mig.config.state=failed` with the reason, as NVIDIA's mig-manager reports it.)

The pure part is here: which annotations differ from the view, which reasons are new.
"""

from __future__ import annotations

from collections.abc import Mapping

from tessera.agent.keys import GPU_DISABLE, GPU_DISABLE_ERROR, PLUGIN_CONFIG, PLUGIN_CONFIG_ERROR

#: input key -> (its error annotation, the reason of the Event when it cannot be used)
REPORTED: Mapping[str, tuple[str, str]] = {
    GPU_DISABLE: (GPU_DISABLE_ERROR, "GpuDisableInvalid"),
    PLUGIN_CONFIG: (PLUGIN_CONFIG_ERROR, "PluginConfigInvalid"),
}


class InputProblems:
    """What the node says about its unusable inputs, and what it should say."""

    def __init__(self) -> None:
        self._announced: dict[str, str] = {}

    @staticmethod
    def annotation_changes(annotations: Mapping[str, str],
                           problems: Mapping[str, str | None]) -> dict[str, str | None]:
        """Error annotations to set (a reason) or remove (None) so that the node shows
        `problems` (input key -> reason, None when it is fine)."""
        changes: dict[str, str | None] = {}
        for key, reason in problems.items():
            annotation, _ = REPORTED[key]
            if annotations.get(annotation) != reason:
                changes[annotation] = reason
        return changes

    def new_events(self, problems: Mapping[str, str | None]) -> list[tuple[str, str]]:
        """(Event reason, message) for each reason not announced before; a fixed input is
        forgotten, so the same mistake made again is announced again."""
        events = []
        for key, reason in problems.items():
            if reason is None:
                self._announced.pop(key, None)
            elif self._announced.get(key) != reason:
                self._announced[key] = reason
                events.append((REPORTED[key][1], reason))
        return events
