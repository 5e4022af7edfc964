"""ResourceSlices: devices and counters as NVIDIA's driver names them, the counter model
checked exhaustively against the hardware's rules on every simulated product, the placement
order, the per-slice limits of both layouts, and the fewest writes."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dra_support import MIG_PRESETS, mig_node, quantity
from tessera.dra.devices import Publication, Target, publish
from tessera.dra.inventory import read_inventory
from tessera.dra.order import name_order, policy_order
from tessera.dra.slices import LAYOUTS, Limits, desired_slices, reconcile
from tessera.hardware.model import GpuInstanceProfile, Placement
from tessera.hardware.sim.catalog import presets, products

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DRIVER = "gpu.nvidia.com"


def _publication(preset: str) -> Publication:
    node, _ = mig_node(preset)
    return publish(read_inventory(node))


def _consumed(device: dict[str, object]) -> dict[str, int]:
    [uses] = device["consumesCounters"]
    return {k: quantity(v["value"]) for k, v in uses["counters"].items()}


def _valid_layout(targets: Sequence[Target], compute_slices: int) -> bool:
    """The hardware's rules for GPU instances on one GPU, from the product data."""
    placements = [t.placement for t in targets]
    assert all(p is not None for p in placements)
    if any(a.overlaps(b) for a, b in itertools.combinations(placements, 2)):
        return False
    profiles = [t.profile for t in targets if t.profile is not None]
    counts = Counter(p.id for p in profiles)
    return (sum(p.slices for p in profiles) <= compute_slices
            and all(counts[p.id] <= p.instance_count for p in profiles)
            and sum(p.name.endswith("+me") for p in profiles) <= 1)


@pytest.mark.parametrize("preset", MIG_PRESETS)
def test_the_counters_admit_exactly_the_layouts_the_hardware_can_make(preset: str) -> None:
    # Every set of placements whose counters fit the GPU's counter set is a valid MIG layout,
    # and every valid layout fits: the scheduler can never allocate what NVML would refuse,
    # nor miss what it would accept.
    publication = _publication(preset)
    product = products()[presets()[preset].gpus[0]]
    if product.mig is None:
        assert publication.counter_sets == ()
        assert all(d["attributes"]["type"]["string"] == "gpu" for d in publication.devices)
        return
    counter_set = publication.counter_sets[0]
    capacity = {k: quantity(v["value"]) for k, v in counter_set["counters"].items()}
    devices = [d for d in publication.devices
               if d.get("consumesCounters", [{}])[0].get("counterSet") == counter_set["name"]]
    targets = [publication.targets[d["name"]] for d in devices]
    uses = [_consumed(d) for d in devices]
    checked = 0

    def visit(i: int, chosen: list[int]) -> None:
        nonlocal checked
        if i == len(devices):
            total = Counter[str]()
            for j in chosen:
                total.update(uses[j])
            fits = all(total[k] <= capacity[k] for k in total)
            valid = _valid_layout([targets[j] for j in chosen], product.mig.compute_slices)
            assert fits == valid, [targets[j].name for j in chosen]
            checked += 1
            return
        visit(i + 1, chosen)
        placement = targets[i].placement
        assert placement is not None
        if all(not placement.overlaps(targets[j].placement) for j in chosen):
            visit(i + 1, [*chosen, i])

    visit(0, [])
    assert checked > len(devices)


@pytest.mark.parametrize("preset", MIG_PRESETS)
def test_every_placement_of_every_profile_is_published_once_by_nvidias_names(preset: str) -> None:
    node, _ = mig_node(preset)
    publication = publish(read_inventory(node))
    names = [d["name"] for d in publication.devices]
    assert len(names) == len(set(names))
    assert all(DNS_LABEL.match(n) for n in names)
    for gpu in node.gpus():
        profiles = node.gpu_instance_profiles(gpu.index) if gpu.mig_capable else ()
        mine = [publication.targets[n] for n in names if publication.targets[n].gpu == gpu.index]
        if not profiles:
            assert [t.name for t in mine] == [f"gpu-{gpu.minor_number}"]
            continue
        assert sorted((t.profile.id, t.placement.start) for t in mine) == sorted(
            (p.id, at.start) for p in profiles for at in p.placements)
    for device in publication.devices:
        attributes = device["attributes"]
        assert len(attributes) + len(device["capacity"]) <= 32
        assert all(len(a.get("string", "")) <= 64 for a in attributes.values())
    for counter_set in publication.counter_sets:
        assert len(counter_set["counters"]) <= 32
        assert all(DNS_LABEL.match(c) for c in counter_set["counters"])


def test_a_mig_device_carries_nvidias_attributes_and_capacities() -> None:
    node, _ = mig_node("dgx-a100")
    publication = publish(read_inventory(node))
    gpu = node.gpu(0)
    device = next(d for d in publication.devices if d["name"] == "gpu-0-mig-3g40gb-9-4")
    attributes = {k: next(iter(v.values())) for k, v in device["attributes"].items()}
    assert attributes == {
        "type": "mig", "parentUUID": gpu.uuid, "profile": "3g.40gb",
        "productName": "NVIDIA A100-SXM4-80GB", "brand": "Nvidia", "architecture": "Ampere",
        "cudaComputeCapability": "8.0.0", "driverVersion": "550.127.8",
        "cudaDriverVersion": "12.4.0",
        "resource.kubernetes.io/pciBusID": gpu.bus_id.lower()[4:],
    }
    assert set(device["capacity"]) == {"multiprocessors", "copyEngines", "decoders",
                                       "encoders", "jpegEngines", "ofaEngines", "memory"}
    assert quantity(device["capacity"]["multiprocessors"]["value"]) == 42
    slices = {k for k in _consumed(device) if k.startswith("memory-slice-")}
    assert slices == {"memory-slice-4", "memory-slice-5", "memory-slice-6", "memory-slice-7"}


def test_small_profiles_start_at_the_high_end_and_keep_slice_0_free() -> None:
    node, _ = mig_node("dgx-a100")
    starts: dict[str, list[int]] = {}
    for profile, placement in policy_order(node.gpu_instance_profiles(0)):
        starts.setdefault(profile.name, []).append(placement.start)
    assert starts["1g.10gb"][:3] == [6, 5, 4]
    assert starts["3g.40gb"] == [4, 0]
    assert starts["2g.20gb"][0] == 4
    names = [f"{p.name}@{at.start}" for p, at in policy_order(node.gpu_instance_profiles(0))]
    nvidia = name_order(node.gpu_instance_profiles(0), names)
    assert nvidia[0][1] == Placement(0, 1)  # NVIDIA's first 1g sits on slice 0


@pytest.mark.parametrize("preset", [p for p in MIG_PRESETS
                                    if products()[presets()[p].gpus[0]].mig is not None])
def test_first_fit_in_policy_order_keeps_bigger_profiles_placeable(preset: str) -> None:
    # Fill a GPU first fit with up to three of its smallest instances: in Tessera's order the
    # biggest profile (in compute slices) that still fits is never smaller than in NVIDIA's
    # name order, and on 8-slice GPUs it is the 4g that name order loses. (No fixed order
    # wins for every count: a fourth 1g on an A100 leaves a 2g where name order leaves a 3g.)
    node, _ = mig_node(preset)
    profiles = node.gpu_instance_profiles(0)
    order = policy_order(profiles)
    names = [f"{p.name}-{at.start}" for p, at in order]
    smallest = order[0][0]

    def largest_left(choices: Sequence[tuple[GpuInstanceProfile, Placement]], k: int) -> int:
        taken: list[Placement] = []
        for p, at in choices:
            if p is smallest and len(taken) < k and not any(at.overlaps(t) for t in taken):
                taken.append(at)
        return max((q.slices for q in profiles for at in q.placements
                    if not any(at.overlaps(t) for t in taken)), default=0)

    for k in range(1, min(3, smallest.instance_count) + 1):
        ours, theirs = largest_left(order, k), largest_left(name_order(profiles, names), k)
        assert ours >= theirs, (k, ours, theirs)
        if max(p.memory_slices for p in profiles) == 8:
            assert (ours, theirs) == (4, 3)


def test_placements_overlapping_an_instance_no_claim_holds_are_withheld() -> None:
    node, _ = mig_node("dgx-a100")
    profile = next(p for p in node.gpu_instance_profiles(0) if p.name == "3g.40gb")
    gi = node.create_gpu_instance(0, profile.id, Placement(0, 4))
    full = next(c for c in node.compute_instance_profiles(profile) if c.slices == profile.slices)
    node.create_compute_instance(0, gi, full.id, full.placements[0])
    publication = publish(read_inventory(node))
    gpu0 = [t for t in publication.targets.values() if t.gpu == 0]
    held = next(t for t in gpu0 if t.name == "gpu-0-mig-3g40gb-9-0")
    assert held.uuid is not None
    assert {t.placement.start for t in gpu0 if t is not held} >= {4, 5, 6}
    assert all(not t.placement.overlaps(Placement(0, 4)) for t in gpu0 if t is not held)
    device = next(d for d in publication.devices if d["name"] == held.name)
    assert device["attributes"]["uuid"] == {"string": held.uuid}
    # Once a claim of ours holds it, it is published as a plain placement again.
    owned = publish(read_inventory(node), owned={held.name})
    assert "uuid" not in next(d for d in owned.devices if d["name"] == held.name)["attributes"]


def test_a_gpu_with_mig_off_is_one_whole_device_without_counters() -> None:
    node, _ = mig_node("mixed")
    node.set_mig_mode(1, False)
    node.reset(1)
    publication = publish(read_inventory(node))
    whole = [d for d in publication.devices if d["attributes"]["type"]["string"] == "gpu"]
    assert [d["name"] for d in whole] == ["gpu-1", "gpu-2", "gpu-3"]
    assert all("consumesCounters" not in d for d in whole)
    assert [c["name"] for c in publication.counter_sets] == ["gpu-0-counter-set"]
    assert quantity(whole[0]["capacity"]["memory"]["value"]) == node.gpu(1).memory_mib * 2**20


# -- slices ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("limits", [Limits(), Limits(devices=5, devices_with_counters=7,
                                                     counter_sets=3, counters=31)])
def test_slices_respect_the_limits_and_keep_everything_in_order(
    layout: str, limits: Limits
) -> None:
    publication = _publication("dgx-a100")
    slices = desired_slices(publication, driver=DRIVER, node="node-a", layout=layout,
                            limits=limits)
    devices = [d for s in slices for d in s["spec"].get("devices", [])]
    sets = [c for s in slices for c in s["spec"].get("sharedCounters", [])]
    expected = list(publication.devices)
    if layout == "combined":
        # 1.34 keeps a GPU's devices in its counter set's slice: at most the per-slice
        # device limit of them, the first in order.
        expected = [d for s in publication.counter_sets
                    for d in [d for d in expected
                              if d["consumesCounters"][0]["counterSet"] == s["name"]]
                    [:limits.devices_with_counters]]
    assert devices == expected
    assert sets == list(publication.counter_sets)
    for s in slices:
        spec = s["spec"]
        assert spec["pool"] == {"name": "node-a", "generation": 0,
                                "resourceSliceCount": len(slices)}
        assert len(spec.get("sharedCounters", [])) <= limits.counter_sets
        assert len(spec.get("devices", [])) <= limits.devices_with_counters
        if layout == "split":
            assert not (spec.get("devices") and spec.get("sharedCounters"))
        else:
            counters = sum(len(c["counters"]) for c in spec.get("sharedCounters", []))
            assert counters <= limits.counters
            here = {c["name"] for c in spec.get("sharedCounters", [])}
            assert all(d["consumesCounters"][0]["counterSet"] in here for d in spec["devices"])


def _stored(writes_create: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{**body, "metadata": {**body["metadata"], "resourceVersion": str(i)}}
            for i, body in enumerate(writes_create, start=1)]


def test_only_changed_slices_are_written_and_the_pool_stays_consistent() -> None:
    publication = _publication("dgx-a100")
    desired = desired_slices(publication, driver=DRIVER, node="node-a")
    first = reconcile(desired, [])
    assert len(first.create) == len(desired)
    assert not first.replace
    assert not first.delete
    stored = _stored(first.create)
    assert {s["spec"]["pool"]["generation"] for s in stored} == {1}
    assert len(reconcile(desired, stored)) == 0

    # One device's attribute changes: that slice alone, at the same generation.
    changed = desired_slices(publication, driver=DRIVER, node="node-a")
    changed[2]["spec"]["devices"][0]["attributes"]["productName"] = {"string": "renamed"}
    writes = reconcile(changed, stored)
    assert [b["metadata"]["name"] for b, _ in writes.replace] == [changed[2]["metadata"]["name"]]
    assert writes.replace[0][1] == stored[2]["metadata"]["resourceVersion"]
    assert writes.replace[0][0]["spec"]["pool"]["generation"] == 1
    assert not writes.create
    assert not writes.delete

    # Fewer slices: a new generation on every slice kept, the rest deleted.
    fewer = desired_slices(Publication(publication.counter_sets, publication.devices[:10],
                                       publication.targets), driver=DRIVER, node="node-a")
    writes = reconcile(fewer, stored)
    assert len(writes.replace) == len(fewer)
    assert {b["spec"]["pool"]["generation"] for b, _ in writes.replace} == {2}
    assert {b["spec"]["pool"]["resourceSliceCount"] for b, _ in writes.replace} == {len(fewer)}
    assert writes.delete == sorted(s["metadata"]["name"] for s in stored[len(fewer):])


def test_an_instance_appearing_on_one_gpu_rewrites_that_gpus_slice_only() -> None:
    node, _ = mig_node("dgx-a100")
    stored = _stored(reconcile(desired_slices(publish(read_inventory(node)), driver=DRIVER,
                                              node="node-a"), []).create)
    profile = next(p for p in node.gpu_instance_profiles(3) if p.name == "4g.40gb")
    node.create_gpu_instance(3, profile.id, Placement(0, 4))
    writes = reconcile(desired_slices(publish(read_inventory(node)), driver=DRIVER,
                                      node="node-a"), stored)
    assert not writes.create
    assert not writes.delete
    [(body, _)] = writes.replace
    assert {d["name"].split("-mig-")[0] for d in body["spec"]["devices"]} == {"gpu-3"}


def _desired(count: int, variant: int) -> list[dict[str, Any]]:
    return [{"metadata": {"name": f"node-a-gpu.nvidia.com-{i}"},
             "spec": {"driver": DRIVER, "nodeName": "node-a",
                      "pool": {"name": "node-a", "generation": 0, "resourceSliceCount": count},
                      "devices": [{"name": f"gpu-{i}", "attributes": {
                          "v": {"int": (variant + i) % 3}}}]}}
            for i in range(count)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), min_size=1, max_size=8))
def test_reconcile_converges_with_a_consistent_pool_from_any_history(
    steps: list[tuple[int, int]],
) -> None:
    stored: dict[str, dict[str, Any]] = {}
    version = 0
    generation = 0
    for count, variant in steps:
        desired = _desired(count, variant)
        before = set(stored)
        writes = reconcile(desired, list(stored.values()))
        for body in writes.create:
            assert body["metadata"]["name"] not in stored
            version += 1
            stored[body["metadata"]["name"]] = {
                **body, "metadata": {**body["metadata"], "resourceVersion": str(version)}}
        for body, expect in writes.replace:
            assert stored[body["metadata"]["name"]]["metadata"]["resourceVersion"] == expect
            version += 1
            stored[body["metadata"]["name"]] = {
                **body, "metadata": {**body["metadata"], "resourceVersion": str(version)}}
        for name in writes.delete:
            del stored[name]
        pools = [s["spec"]["pool"] for s in stored.values()]
        assert {p["resourceSliceCount"] for p in pools} == {count}
        [now] = {p["generation"] for p in pools}
        if set(stored) != before:
            assert now > generation  # a reshaped pool is a new generation
        generation = now
        assert [{**s["spec"], "pool": None} for s in
                sorted(stored.values(), key=lambda s: s["metadata"]["name"])] == [
            {**d["spec"], "pool": None} for d in desired]
        assert len(reconcile(desired, list(stored.values()))) == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_many_devices_without_counters_fit_the_limit_a_taint_sets(layout: str) -> None:
    # 1.35: at most 64 devices in a slice once any carries a taint, and health may taint any
    # device later, so plain devices never share a slice past 64 either.
    devices = tuple({"name": f"gpu-{i}", "attributes": {}, "taints": [
        {"key": f"{DRIVER}/xid", "value": "48", "effect": "NoSchedule"}]} for i in range(150))
    publication = Publication((), devices, {d["name"]: Target(d["name"], i)
                                            for i, d in enumerate(devices)})
    slices = desired_slices(publication, driver=DRIVER, node="node-a", layout=layout)
    assert [len(s["spec"]["devices"]) for s in slices] == [64, 64, 22]
    assert [d for s in slices for d in s["spec"]["devices"]] == list(devices)
