"""How the partitioner behaves: its flags, each bounded before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.errors import ConfigError
from tessera.kube.layoutstatus import MODE, PARTITIONED
from tessera.placement import POLICIES


@dataclass(frozen=True)
class PartitionerSettings:
    node_labels: dict[str, str] = field(default_factory=lambda: {MODE: PARTITIONED})
    batch_idle_s: float = 1.5
    batch_cap_s: float = 10.0
    policy: str = "tessera"
    solver_time_limit_s: float = 1.0
    resync_s: float = 30.0  # plan still-waiting pods again this often, even with no change
    max_pods_per_batch: int = 2000
    metrics_port: int | None = 9410  # None: no metrics endpoint
    metrics_address: str = ""

    def __post_init__(self) -> None:
        bounds = (("batch idle window", self.batch_idle_s, 0.05, 300.0),
                  ("batch cap", self.batch_cap_s, 0.1, 3600.0),
                  ("solver time limit", self.solver_time_limit_s, 0.01, 600.0),
                  ("resync interval", self.resync_s, 0.5, 3600.0))
        for what, value, low, high in bounds:
            if not low <= value <= high:
                raise ConfigError(f"{what} {value:g} s: must be from {low:g} to {high:g} s")
        if self.batch_cap_s < self.batch_idle_s:
            raise ConfigError(f"batch cap {self.batch_cap_s:g} s is shorter than the idle "
                              f"window {self.batch_idle_s:g} s: the cap must be the longer")
        if self.policy not in POLICIES:
            raise ConfigError(f"placement policy {self.policy!r}: choose one of "
                              f"{', '.join(POLICIES)}")
        if not 1 <= self.max_pods_per_batch <= 100_000:
            raise ConfigError(f"max pods per batch {self.max_pods_per_batch}: must be from 1 "
                              "to 100000")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port {self.metrics_port}: must be from 0 to 65535")
        if not self.node_labels:
            raise ConfigError("the opted-in node label is empty: nodes must opt in by a label")


def parse_label(text: str) -> dict[str, str]:
    """`key=value` (the opt-in label selector) as a one-entry map; ConfigError if not."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value or "," in text:
        raise ConfigError(f"--node-label {text!r}: expected one KEY=VALUE, e.g. "
                          f"{MODE}={PARTITIONED}")
    return {key.strip(): value.strip()}
