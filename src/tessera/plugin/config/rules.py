"""Rules across sections of a config, checked after parsing and again after overrides.

`_check_flags` is NVIDIA's `validateFlags`, run where NVIDIA runs it: on the effective
flags, after the environment and the command line are applied (MPS_ROOT or --mps-root
may supply what the file lacks). Without the `mixed` MIG strategy a shared MIG resource
does not exist, which is worth a warning rather than an error.
"""

from __future__ import annotations

from tessera.plugin.config.messages import _Where
from tessera.plugin.config.names import _is_mig_name
from tessera.plugin.config.values import _KIND_KEYS, PluginConfig


def _check_flags(config: PluginConfig, where: _Where) -> None:
    """Refuse, with NVIDIA's reasons, what NVIDIA's plugin refuses at start."""
    if not any(s.kind == "mps" for s in config.sharing):
        return
    if config.flags.mig_strategy == "mixed" and not config.extensions.mps_with_mixed:
        raise where.error(
            "using --mig-strategy=mixed is not supported with MPS: use migStrategy none or "
            "single, share with timeSlicing, or set tessera.extensions.mpsWithMixed: true to "
            "share whole GPUs with MPS beside the MIG devices",
            "sharing.mps",
        )
    if not config.flags.mps_root:
        raise where.error(
            "using MPS requires --mps-root: set flags.mpsRoot in the config, MPS_ROOT or "
            "--mps-root (the Helm chart sets it when mps.enabled is true)",
            "flags.mpsRoot",
        )


def _strategy_warnings(config: PluginConfig) -> tuple[str, ...]:
    """MIG resources exist only with the mixed strategy; sharing them otherwise does nothing.
    Tegra discovery is NVIDIA's own path for Jetson boards; Tessera reads NVML."""
    tegra = (
        ("flags.deviceDiscoveryStrategy: tegra is ignored; Tessera finds devices through NVML",)
        if config.flags.device_discovery_strategy == "tegra"
        else ()
    )
    if config.flags.mig_strategy == "mixed":
        return tegra
    return tegra + tuple(
        f"sharing.{_KIND_KEYS[s.kind]}: {r.name} exists only with migStrategy mixed "
        f"(now {config.flags.mig_strategy}), so its sharing entry does nothing"
        for s in config.sharing
        for r in s.resources
        if _is_mig_name(r.name)
    )
