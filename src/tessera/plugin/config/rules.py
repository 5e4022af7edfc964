"""Rules across sections of a config, checked after parsing and again after overrides.

Without the `mixed` MIG strategy a shared MIG resource does not exist, which is worth a
warning rather than an error. (NVIDIA's plugin also refuses MPS with `mixed`; Tessera
shares whole GPUs with MPS beside MIG devices and refuses MPS only on a MIG device itself,
when it plans resources for the devices present.)
"""

from __future__ import annotations

from tessera.plugin.config.names import _is_mig_name
from tessera.plugin.config.values import _KIND_KEYS, PluginConfig


def _strategy_warnings(config: PluginConfig) -> tuple[str, ...]:
    """MIG resources exist only with the mixed strategy; sharing them otherwise does nothing."""
    if config.flags.mig_strategy == "mixed":
        return ()
    return tuple(
        f"sharing.{_KIND_KEYS[s.kind]}: {r.name} exists only with migStrategy mixed "
        f"(now {config.flags.mig_strategy}), so its sharing entry does nothing"
        for s in config.sharing
        for r in s.resources
        if _is_mig_name(r.name)
    )
