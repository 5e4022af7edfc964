"""`with_overrides`: NVIDIA's environment variables and the command line over a file's config.

Precedence is NVIDIA's: command line, then environment, then the file. Values are read as
NVIDIA's Go flags read them (booleans as strconv.ParseBool), plus the health check variables
DP_DISABLE_HEALTHCHECKS / DP_ENABLE_HEALTHCHECKS and the IMEX variables. The result is then
checked as NVIDIA's `validateFlags` checks it (MPS needs an MPS root and no mixed strategy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from tessera.errors import PluginConfigError
from tessera.plugin.config.messages import _choices, _show, _Where
from tessera.plugin.config.parse import _one_of, _strategies
from tessera.plugin.config.rules import _check_flags, _strategy_warnings
from tessera.plugin.config.values import (
    ALLOCATION_POLICIES,
    DEVICE_ID_STRATEGIES,
    DISCOVERY_STRATEGIES,
    MIG_STRATEGIES,
    DeviceListStrategy,
    Flags,
    Health,
    Imex,
    PluginConfig,
    PluginFlags,
)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    # Go's strconv.ParseBool, which NVIDIA's flags use, plus any letter case.
    text = value.strip().lower() if isinstance(value, str) else None
    if text in {"1", "t", "true"}:
        return True
    if text in {"0", "f", "false"}:
        return False
    raise ValueError(f"got {_show(value)}: expected true or false")


def _to_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"got {_show(value)}: expected a path")
    return value.strip()


def _to_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"got {_show(value)}: expected a string")
    return value


def _to_strategies(value: Any) -> tuple[DeviceListStrategy, ...]:
    items = [i.strip() for i in value.split(",")] if isinstance(value, str) else value
    return _strategies(items)


def _to_choice(options: Sequence[str]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        choice = _one_of(value.strip().lower() if isinstance(value, str) else value, options)
        if choice is None:
            raise ValueError(f"got {_show(value)}: expected {_choices(options)}")
        return choice

    return convert


# Python field name -> (NVIDIA's environment variables, first found wins; converter).
_OVERRIDES: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "mig_strategy": (("MIG_STRATEGY",), _to_choice(MIG_STRATEGIES)),
    "fail_on_init_error": (("FAIL_ON_INIT_ERROR",), _to_bool),
    "nvidia_driver_root": (("NVIDIA_DRIVER_ROOT",), _to_path),
    "nvidia_dev_root": (("NVIDIA_DEV_ROOT",), _to_path),
    "mps_root": (("MPS_ROOT",), _to_path),
    "gdrcopy_enabled": (("GDRCOPY_ENABLED",), _to_bool),
    "gds_enabled": (("GDS_ENABLED",), _to_bool),
    "mofed_enabled": (("MOFED_ENABLED",), _to_bool),
    "device_discovery_strategy": (
        ("DEVICE_DISCOVERY_STRATEGY",),
        _to_choice(DISCOVERY_STRATEGIES),
    ),
    "pass_device_specs": (("PASS_DEVICE_SPECS",), _to_bool),
    "device_list_strategy": (("DEVICE_LIST_STRATEGY",), _to_strategies),
    "device_id_strategy": (("DEVICE_ID_STRATEGY",), _to_choice(DEVICE_ID_STRATEGIES)),
    "cdi_annotation_prefix": (("CDI_ANNOTATION_PREFIX",), _to_text),
    "nvidia_ctk_path": (("NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"), _to_path),
    "container_driver_root": (("DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT"), _to_path),
    "shared_devices_allocation_policy": (
        ("SHARED_DEVICES_ALLOCATION_POLICY",),
        _to_choice(ALLOCATION_POLICIES),
    ),
}
_PLUGIN_FIELDS = frozenset(f.name for f in fields(PluginFlags))


def with_overrides(
    config: PluginConfig,
    env: Mapping[str, str],
    *,
    source: str = "<config>",
    config_name: str | None = None,
    imex_channel_ids: str | None = None,
    imex_required: bool | str | None = None,
    **cli: Any,
) -> PluginConfig:
    """`config` with NVIDIA's environment variables and command-line values applied.

    Precedence is NVIDIA's: command line, then environment, then the file. `cli` takes the
    field names of `Flags` and `PluginFlags`, `imex_*` NVIDIA's --imex-channel-ids (a
    comma-separated list) and --imex-required; None (and an empty variable) means "not set".
    Raises `PluginConfigError` for a bad value, or for flags NVIDIA's plugin refuses (named
    as config `config_name` of the file `source`).
    """
    unknown = sorted(set(cli) - set(_OVERRIDES))
    if unknown:
        raise TypeError(f"with_overrides() got unexpected keyword arguments: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, (variables, convert) in _OVERRIDES.items():
        if cli.get(name) is not None:
            origin, value = f"option --{name.replace('_', '-')}", cli[name]
        else:
            variable = next((v for v in variables if env.get(v, "").strip()), None)
            if variable is None:
                continue
            origin, value = f"environment variable {variable}", env[variable]
        try:
            values[name] = convert(value)
        except ValueError as e:
            raise PluginConfigError(str(e), source=origin) from e
    updated = replace(
        config,
        flags=_override_flags(config.flags, values),
        health=_override_health(config.health, env),
        imex=_override_imex(config.imex, env, imex_channel_ids, imex_required),
    )
    kept = tuple(w for w in config.warnings if w not in _strategy_warnings(config))
    _check_flags(updated, _Where(source, config_name))
    return replace(updated, warnings=kept + _strategy_warnings(updated))


def _override_flags(flags: Flags, values: Mapping[str, Any]) -> Flags:
    plugin = replace(flags.plugin, **{k: v for k, v in values.items() if k in _PLUGIN_FIELDS})
    top = {k: v for k, v in values.items() if k not in _PLUGIN_FIELDS}
    # NVIDIA's dev root follows the driver root unless set on its own; a file that set both
    # to one path reads as not having set the dev root on its own.
    following = flags.nvidia_dev_root == flags.nvidia_driver_root
    if "nvidia_driver_root" in top and "nvidia_dev_root" not in top and following:
        top["nvidia_dev_root"] = top["nvidia_driver_root"]
    return replace(flags, plugin=plugin, **top)


def _override_health(health: Health, env: Mapping[str, str]) -> Health:
    """NVIDIA's DP_DISABLE_HEALTHCHECKS and DP_ENABLE_HEALTHCHECKS (which wins over it)."""
    disable = _env_items(env, "DP_DISABLE_HEALTHCHECKS")
    enable = _env_items(env, "DP_ENABLE_HEALTHCHECKS")
    ignored, enabled = health.ignored_xids, health.enabled_xids
    disabled = health.disabled or bool({"all", "xids"} & set(disable))
    extra = _env_xids(disable, {"all", "xids"}, "DP_DISABLE_HEALTHCHECKS")
    ignored, enabled = ignored | extra, enabled - extra
    if "all" in enable:
        return replace(health, disabled=False, ignored_xids=frozenset(), enabled_xids=enabled)
    forced = _env_xids(enable, set(), "DP_ENABLE_HEALTHCHECKS")
    return replace(
        health, disabled=disabled, ignored_xids=ignored - forced, enabled_xids=enabled | forced
    )


def _env_items(env: Mapping[str, str], variable: str) -> list[str]:
    return [i.strip().lower() for i in env.get(variable, "").split(",") if i.strip()]


def _env_xids(items: Iterable[str], keywords: set[str], variable: str) -> frozenset[int]:
    xids: set[int] = set()
    for item in items:
        if item in keywords:
            continue
        if not item.isdigit() or len(item) > 9 or int(item) == 0:
            words = " or ".join([*sorted(keywords), "XID numbers"])
            raise PluginConfigError(
                f"{item!r} is not an XID: expected {words}, comma-separated (e.g. 48,79)",
                source=f"environment variable {variable}",
            )
        xids.add(int(item))
    return frozenset(xids)


def _override_imex(
    imex: Imex, env: Mapping[str, str], cli_ids: str | None, cli_required: bool | str | None
) -> Imex:
    """IMEX_CHANNEL_IDS and IMEX_REQUIRED, under --imex-channel-ids and --imex-required."""
    if cli_ids is not None:
        origin = "option --imex-channel-ids"
        items = [i.strip() for i in cli_ids.split(",") if i.strip()]
    else:
        origin = "environment variable IMEX_CHANNEL_IDS"
        items = _env_items(env, "IMEX_CHANNEL_IDS")
    if items:
        if items != ["0"]:
            raise PluginConfigError(
                f"invalid IMEX config: channelIDs must be [] or [0]; found {','.join(items)}",
                source=origin,
            )
        imex = replace(imex, channel_ids=(0,))
    required: bool | str | None = cli_required
    origin = "option --imex-required"
    if required is None:
        required = env.get("IMEX_REQUIRED", "").strip() or None
        origin = "environment variable IMEX_REQUIRED"
    if required is not None:
        try:
            imex = replace(imex, required=_to_bool(required))
        except ValueError as e:
            raise PluginConfigError(str(e), source=origin) from e
    return imex
