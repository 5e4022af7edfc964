"""The node labels and annotations the agent reads and writes.

NVIDIA's names where users already have them (so kubectl habits, dashboards and
automation carry over); Tessera's additions under `tessera.dev/`.
"""

from __future__ import annotations

from tessera.kube import layoutstatus

MIG_CONFIG = "nvidia.com/mig.config"
MIG_CONFIG_STATE = "nvidia.com/mig.config.state"
PLUGIN_CONFIG = "nvidia.com/device-plugin.config"

MIG_REASON = "tessera.dev/mig.config.reason"  # why the state is what it is, in words
MIG_FORCE = "tessera.dev/mig.config.force"  # "true": destroy instances in use for this change
MIG_MODE = "tessera.dev/mig.mode"  # managed (default) | dynamic | explicit | partitioned
MIG_LAYOUT = "tessera.dev/mig.layout"  # explicit mode: the exact layout, with placements
GPU_DISABLE = "tessera.dev/gpu.disable"  # JSON {"<index|uuid>": "<reason>"}
GPU_STATE = "tessera.dev/gpu.state"  # JSON {"<index>": {"reason", "state", "pids"}}

MANAGED = "managed"  # follow nvidia.com/mig.config, as NVIDIA's mig-manager does
DYNAMIC = "dynamic"  # MIG on; instances are made by hand or by a controller, never by us
EXPLICIT = "explicit"  # converge to the layout in tessera.dev/mig.layout
# explicit, with the layout written by `tessera partitioner`; the agent also publishes what
# it holds and which generation it reached (the protocol: tessera.kube.layoutstatus)
PARTITIONED = layoutstatus.PARTITIONED
LAYOUT_GENERATION = layoutstatus.GENERATION
LAYOUT_OBSERVED = layoutstatus.OBSERVED
LAYOUT_FAILED = layoutstatus.FAILED
LAYOUT_STATUS = layoutstatus.STATUS

PENDING = "pending"
SUCCESS = "success"
FAILED = "failed"
REBOOTING = "rebooting"

# Why the agent cannot use a value of the key before it (set while it cannot, removed once
# it can): the node says what is wrong with its own labels and annotations.
GPU_DISABLE_ERROR = "tessera.dev/gpu.disable.error"
PLUGIN_CONFIG_ERROR = "tessera.dev/device-plugin.config.error"
