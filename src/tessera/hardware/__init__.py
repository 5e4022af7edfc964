"""The one seam to GPUs: NVML through the pynvml API, or the simulator behind the same API.

Nothing here knows of Kubernetes. Other layers read and change GPUs through `Node`
(`tessera.hardware.node`) and the frozen values of `tessera.hardware.model`, receive XID
errors through `tessera.hardware.events`, and sample utilisation, power, clocks and memory
through `tessera.hardware.telemetry`.
"""
