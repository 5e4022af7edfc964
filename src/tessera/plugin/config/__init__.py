"""NVIDIA k8s-device-plugin config v1, read strictly, plus what NVIDIA's users asked for.

A file NVIDIA's plugin accepts is accepted here with the same meaning and the same error
texts; keys nobody defines are refused (NVIDIA silently ignores them, which hides typos).
Tessera honours what NVIDIA parses but throws away: `devices` and `rename` of a shared
resource (per-GPU sharing), and adds `replicas: {memoryPerReplica: 10Gi}` and a top-level
`tessera:` section (`excludeDevices`, `health`) that NVIDIA's plugin skips, so one file serves
both. Parsing yields frozen values; anything wrong raises one `PluginConfigError` naming the
file, the named config and the field path. `with_overrides` layers NVIDIA's environment
variables and the command line on top; `load_set` reads the named configs of a ConfigMap
directory for the `nvidia.com/device-plugin.config` node label. What the values mean on a
node (which devices exist, which resources to serve) is decided elsewhere in the plugin.

This package's public names are all here; its modules, one concept each:

- `values`: the frozen values (`PluginConfig` and its parts), vocabularies and defaults
- `wire`: the pydantic models of what a file may say
- `parse`: `parse` and `load_file`, building the values section by section
- `sharing`, `devices`, `names`: the `sharing` section, device references, resource names
- `rules`: checks across sections (the MIG strategy against sharing)
- `messages`: error locations, shown values and did-you-mean for unknown keys
- `render`: the effective config as camelCase JSON (`PluginConfig.to_json`)
- `overrides`: `with_overrides`, environment and command line over the file
- `named`: `ConfigSet` and `load_set`, the named configs of a ConfigMap
- `units`: memory quantities and durations
"""

from tessera.plugin.config.named import ConfigSet, load_set
from tessera.plugin.config.names import GPU_RESOURCE
from tessera.plugin.config.overrides import with_overrides
from tessera.plugin.config.parse import load_file, parse
from tessera.plugin.config.values import (
    ALLOCATION_POLICIES,
    DEFAULT_IGNORED_XIDS,
    DEFAULT_RECOVERY_SECONDS,
    DEVICE_ID_STRATEGIES,
    DEVICE_LIST_STRATEGIES,
    MIG_STRATEGIES,
    AllocationPolicy,
    DeviceIdStrategy,
    DeviceListStrategy,
    DeviceRef,
    DeviceSelector,
    Flags,
    Health,
    Imex,
    MigStrategy,
    PluginConfig,
    PluginFlags,
    Replicas,
    SharedResource,
    Sharing,
    SharingKind,
    default_config,
)

__all__ = [
    "ALLOCATION_POLICIES",
    "DEFAULT_IGNORED_XIDS",
    "DEFAULT_RECOVERY_SECONDS",
    "DEVICE_ID_STRATEGIES",
    "DEVICE_LIST_STRATEGIES",
    "GPU_RESOURCE",
    "MIG_STRATEGIES",
    "AllocationPolicy",
    "ConfigSet",
    "DeviceIdStrategy",
    "DeviceListStrategy",
    "DeviceRef",
    "DeviceSelector",
    "Flags",
    "Health",
    "Imex",
    "MigStrategy",
    "PluginConfig",
    "PluginFlags",
    "Replicas",
    "SharedResource",
    "Sharing",
    "SharingKind",
    "default_config",
    "load_file",
    "load_set",
    "parse",
    "with_overrides",
]
