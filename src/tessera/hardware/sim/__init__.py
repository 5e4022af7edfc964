"""A simulated GPU node behind the pynvml API.

`SimulatedNvml` answers the subset of pynvml that Tessera calls, with the same function
names, struct types and `NVMLError` codes, over a state file that outlives the process (MIG
instances outlive the process that made them on a real node). Products and machine
presets are data (`data/products.yaml`, `data/presets.yaml`).
"""
