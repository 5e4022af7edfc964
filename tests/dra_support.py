"""Helpers the DRA tests share: simulated nodes with MIG on, counter arithmetic, and a
stand-in for the scheduler's allocator."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

from helpers import make_node, until
from tessera.dra.server import DraPlugin, DraSettings
from tessera.hardware.node import Node
from tessera.hardware.sim.catalog import presets
from tessera.hardware.sim.control import SimulatorControl
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import TestDraKubelet

MIG_PRESETS = tuple(sorted(presets()))
DRIVER = "gpu.nvidia.com"
# NVIDIA's DeviceClasses' selectors (the chart's DeviceClasses), as the stand-in scheduler
# evaluates them.
MIG_CLASS = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'mig'"
GPU_CLASS = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'"


def mig_node(preset: str, state_file: object = None) -> tuple[Node, SimulatorControl]:
    """A simulated node with MIG mode on (and no instances) on every MIG-capable GPU."""
    node, control = make_node(preset, state_file)
    for gpu in node.gpus():
        if gpu.mig_capable and not node.mig_state(gpu.index).mode.current:
            node.set_mig_mode(gpu.index, True)
            node.reset(gpu.index)
    return node, control


@dataclass
class PluginRig:
    """A DRA plugin under test and what it runs against: the fake API server and the plugin's
    client of it, the stand-in kubelet, the simulated node and its control, the settings."""

    api: FakeApiServer
    dra: DraApi
    kubelet: TestDraKubelet
    plugin: DraPlugin
    node: Node
    control: SimulatorControl
    settings: DraSettings


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str) -> int:
    """A Kubernetes quantity in binary units or none (what Tessera writes: `<n>Mi`, `<n>`)."""
    for suffix, factor in _BINARY.items():
        if value.endswith(suffix):
            return int(value[:-2]) * factor
    return int(value)


# CEL's Kubernetes quantity library, as far as DRA selectors use it: `quantity("10Gi")` and
# the comparisons on a capacity (`device.capacity[...].memory.isGreaterThan(...)`).
_QUANTITY = {
    "quantity": lambda text: celtypes.IntType(quantity(str(text))),
    "isGreaterThan": lambda a, b: celtypes.BoolType(a > b),
    "isLessThan": lambda a, b: celtypes.BoolType(a < b),
    "compareTo": lambda a, b: celtypes.IntType((a > b) - (a < b)),
}


# -- a stand-in for kube-scheduler's structured allocator --------------------------------------

Obj = dict[str, Any]


class UnschedulableError(Exception):
    """No device fits a request of the claim."""


class Allocator:
    """Allocates claims from the published ResourceSlices as kube-scheduler's structured
    allocator does (`allocator_stable.go`): only the newest generation of each pool, pools,
    then slices, then devices in slice order, the first device that matches the DeviceClass's
    and the request's CEL selectors (evaluated with cel-python), is not allocated to another
    claim and whose counters still fit what the other allocations left of its counter set.

    With binding conditions (KEP-5007) it copies a device's `bindingConditions` and
    `bindingFailureConditions` into the allocation result, and `bind` waits as the
    scheduler's PreBind does. A binding failure clears the allocation, as the scheduler's
    unreserve does, and "retry elsewhere" is modelled simply: the failed device is never
    allocated to that claim again.

    The scheduler's order of pools and of slices within a pool is not defined (it comes from
    Go maps: `tessera.dra.order`). By default this stand-in takes them by name, one of the
    orders the scheduler may take; with `rng` it shuffles them on every allocation, as the
    scheduler may, so a test can show what holds whatever order it takes."""

    def __init__(self, api: FakeApiServer, rng: random.Random | None = None) -> None:
        self.api = api
        self.env = celpy.Environment()
        self.rng = rng
        self.excluded: dict[tuple[str, str], set[tuple[str, str, str]]] = {}

    def _matches(self, expressions: list[str], device: Obj, driver: str) -> bool:
        attributes: dict[str, dict[str, object]] = {}
        for key, value in device.get("attributes", {}).items():
            domain, _, name = key.rpartition("/")
            attributes.setdefault(domain or driver, {})[name] = next(iter(value.values()))
        capacity: dict[str, dict[str, object]] = {}
        for key, value in device.get("capacity", {}).items():
            domain, _, name = key.rpartition("/")
            capacity.setdefault(domain or driver, {})[name] = quantity(value["value"])
        activation = celpy.json_to_cel({"device": {"driver": driver, "attributes": attributes,
                                                   "capacity": capacity}})
        return all(bool(self.env.program(self.env.compile(e), functions=_QUANTITY)
                        .evaluate(activation)) for e in expressions)

    def _pools(self) -> list[tuple[str, str, list[Obj]]]:
        by_pool: dict[tuple[str, str], list[Obj]] = {}
        for s in self.api.slices():
            by_pool.setdefault((s["spec"]["driver"], s["spec"]["pool"]["name"]), []).append(s)
        pools = []
        for (driver, pool), slices in sorted(by_pool.items()):
            newest = max(s["spec"]["pool"]["generation"] for s in slices)
            current = [s for s in slices if s["spec"]["pool"]["generation"] == newest]
            assert len(current) == current[0]["spec"]["pool"]["resourceSliceCount"], (
                f"pool {pool} is incomplete")
            current.sort(key=lambda s: int(s["metadata"]["name"].rsplit("-", 1)[1]))
            if self.rng is not None:
                self.rng.shuffle(current)
            pools.append((driver, pool, current))
        if self.rng is not None:
            self.rng.shuffle(pools)
        return pools

    def _in_use(self) -> set[tuple[str, str, str]]:
        items, _ = self.api.store.query("resourceclaims", None, lambda _: True)
        return {(r["driver"], r["pool"], r["device"]) for c in items
                for r in ((c.get("status") or {}).get("allocation") or {})
                .get("devices", {}).get("results", [])}

    def allocate(self, name: str, namespace: str = "default") -> Obj:
        claim = self.api.claim(name, namespace)
        taken = self._in_use() | self.excluded.get((namespace, name), set())
        pools = self._pools()
        left: dict[tuple[str, str, str], Counter[str]] = {}
        devices: dict[tuple[str, str, str], Obj] = {}
        for driver, pool, slices in pools:
            for s in slices:
                for counter_set in s["spec"].get("sharedCounters", []):
                    left[driver, pool, counter_set["name"]] = Counter(
                        {k: quantity(v["value"]) for k, v in counter_set["counters"].items()})
                for device in s["spec"].get("devices", []):
                    devices[driver, pool, device["name"]] = device
        for key in taken:
            _consume(left, key, devices.get(key))
        results = []
        for request in claim["spec"]["devices"]["requests"]:
            exact = request["exactly"]
            klass = self.api.store.get("deviceclasses", "", exact["deviceClassName"])
            selectors = [s["cel"]["expression"] for s in klass["spec"].get("selectors", [])]
            selectors += [s["cel"]["expression"] for s in exact.get("selectors", [])]
            chosen = next((key for key, device in devices.items()
                           if key not in taken and _fits(left, key, device)
                           and self._matches(selectors, device, key[0])), None)
            if chosen is None:
                raise UnschedulableError(f"no device for request {request['name']} of {name}")
            taken.add(chosen)
            _consume(left, chosen, devices[chosen])
            results.append({"request": request["name"], "driver": chosen[0],
                            "pool": chosen[1], "device": chosen[2], **{
                                k: devices[chosen][k] for k in _BINDING
                                if devices[chosen].get(k)}})
        config = [{"source": "FromClaim", **c}
                  for c in claim["spec"]["devices"].get("config", [])]
        status = {"allocation": {"devices": {"results": results, "config": config}}}
        self.api.set_claim_status(name, status, namespace)
        return status


    async def bind(self, name: str, namespace: str = "default") -> bool:
        """Wait until every binding condition of the claim's allocation is True in its
        `status.devices` (True: the pod binds) or any failure condition is (False: the
        allocation and device status are cleared and the failed device excluded)."""
        failed: list[tuple[str, str, str]] = []

        def decided() -> bool:
            status = self.api.claim(name, namespace)["status"]
            seen = {(d["driver"], d["pool"], d["device"]):
                    {c["type"]: c["status"] for c in d.get("conditions", [])}
                    for d in status.get("devices", [])}
            results = status["allocation"]["devices"]["results"]
            for r in results:
                key = (r["driver"], r["pool"], r["device"])
                if any(seen.get(key, {}).get(c) == "True"
                       for c in r.get("bindingFailureConditions", [])):
                    failed.append(key)
                    return True
            return all(seen.get((r["driver"], r["pool"], r["device"]), {}).get(c) == "True"
                       for r in results for c in r.get("bindingConditions", []))

        await until(decided, f"ResourceClaim {namespace}/{name} to be ready or failed")
        if not failed:
            return True
        self.excluded.setdefault((namespace, name), set()).update(failed)
        self.api.set_claim_status(name, {}, namespace)
        return False


_BINDING = ("bindingConditions", "bindingFailureConditions")


def _fits(left: dict[tuple[str, str, str], Counter[str]], key: tuple[str, str, str],
          device: Obj) -> bool:
    for uses in device.get("consumesCounters", []):
        have = left[key[0], key[1], uses["counterSet"]]
        if any(quantity(v["value"]) > have[k] for k, v in uses["counters"].items()):
            return False
    return True


def _consume(left: dict[tuple[str, str, str], Counter[str]], key: tuple[str, str, str],
             device: Obj | None) -> None:
    for uses in (device or {}).get("consumesCounters", []):
        have = left[key[0], key[1], uses["counterSet"]]
        for k, v in uses["counters"].items():
            have[k] -= quantity(v["value"])
