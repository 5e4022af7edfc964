"""The Prometheus exporter: dcgm-exporter's metrics, per GPU, per MIG instance and per pod.

`Exporter` (`tessera.metrics.exporter`) samples the node in the background and serves the
latest sample on `/metrics`; `counters` reads dcgm-exporter's counters CSV (`legacy`: its 1.x
names and DCGM's aliases); `flags` parses and bounds dcgm-exporter's flag values; `pods` and
`owners` say which container holds which device and process; `rows` turns a sample into
dcgm-exporter-shaped metric families, for the devices `devices` (`-d`) selects; `windows`
counts events over dcgm-exporter's windows; `state` is what the node agent reports of itself.
"""

from tessera.metrics.exporter import Exporter, ExporterSettings
from tessera.metrics.state import TesseraState

__all__ = ["Exporter", "ExporterSettings", "TesseraState"]
