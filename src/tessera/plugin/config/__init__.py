"""NVIDIA k8s-device-plugin config v1, read as NVIDIA reads it, plus what its users asked for.

A file NVIDIA's plugin accepts is accepted here with the same meaning, and one it refuses is
refused with NVIDIA's reason; keys nobody defines are ignored with a warning naming them, as
NVIDIA's plugin ignores them (a newer NVIDIA field must not take a node down). Fields NVIDIA
parses but throws away (`devices` and `rename` of a shared resource, timeSlicing beside mps)
are thrown away too, with a warning, unless `tessera.extensions` opts into Tessera's meaning
(per-GPU sharing, renames as written, both kinds at once). `replicas: {memoryPerReplica:
10Gi}` and the top-level `tessera:` section (`excludeDevices`, `health`, `extensions`), which
NVIDIA's plugin skips or refuses, need no opt-in. Parsing yields frozen values; anything
wrong raises one `PluginConfigError` naming the file, the named config and the field path.
`with_overrides` layers NVIDIA's environment
variables and the command line on top; `load_set` reads the named configs of a ConfigMap
directory for the `nvidia.com/device-plugin.config` node label. What the values mean on a
node (which devices exist, which resources to serve) is decided elsewhere in the plugin.

This package's public names are all here; its modules, one concept each:

- `values`: the frozen values (`PluginConfig` and its parts), vocabularies and defaults
- `wire`: the pydantic models of what a file may say (unknown keys kept aside, for warnings)
- `parse`: `parse` and `load_file`, building the values section by section
- `sharing`, `devices`, `names`: the `sharing` section, device references, resource names
- `rules`: checks across sections (NVIDIA's start-up checks of the flags against sharing)
- `limits`: the replica ceiling, from the size of the message the kubelet reads
- `messages`: error locations, shown values and did-you-mean for unknown keys
- `render`: the effective config as camelCase JSON (`PluginConfig.to_json`)
- `overrides`: `with_overrides`, environment and command line over the file
- `named`: `ConfigSet` and `load_set`, the named configs of a ConfigMap
- `units`: memory quantities and durations
"""

from tessera.plugin.config.limits import (
    DEVICE_ID_LENGTH,
    KUBELET_MESSAGE_LIMIT,
    MAX_REPLICAS_PER_DEVICE,
    REPLICA_SEPARATOR,
    device_entry_bytes,
    replica_ceiling,
    replica_list_bytes,
)
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
    DISCOVERY_STRATEGIES,
    MIG_STRATEGIES,
    AllocationPolicy,
    DeviceIdStrategy,
    DeviceListStrategy,
    DeviceRef,
    DeviceSelector,
    Extensions,
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
    "DEVICE_ID_LENGTH",
    "DEVICE_ID_STRATEGIES",
    "DEVICE_LIST_STRATEGIES",
    "DISCOVERY_STRATEGIES",
    "GPU_RESOURCE",
    "KUBELET_MESSAGE_LIMIT",
    "MAX_REPLICAS_PER_DEVICE",
    "MIG_STRATEGIES",
    "REPLICA_SEPARATOR",
    "AllocationPolicy",
    "ConfigSet",
    "DeviceIdStrategy",
    "DeviceListStrategy",
    "DeviceRef",
    "DeviceSelector",
    "Extensions",
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
    "device_entry_bytes",
    "load_file",
    "load_set",
    "parse",
    "replica_ceiling",
    "replica_list_bytes",
    "with_overrides",
]
