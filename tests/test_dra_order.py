"""The placement order as occupancy changes: properties over every simulated MIG product and
random occupancies, the idle-GPU order it keeps, the GPU order within a slice, one slice
rewritten per change, and the plugin republishing when told of an allocation."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dra_support import MIG_PRESETS, Allocator, mig_node
from tessera.dra.devices import publish
from tessera.dra.inventory import read_inventory
from tessera.dra.order import Choice, policy_order
from tessera.dra.server import DraPlugin, DraSettings
from tessera.dra.slices import LAYOUTS, Layout, desired_slices, reconcile
from tessera.hardware.model import GpuInstanceProfile, Placement
from tessera.hardware.node import Node
from tessera.hardware.sim.catalog import presets, products
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
MIG_CLASS = f"device.attributes['{DRIVER}'].type == 'mig'"
WITH_MIG = [p for p in MIG_PRESETS if products()[presets()[p].gpus[0]].mig is not None]


def _profiles(preset: str) -> tuple[GpuInstanceProfile, ...]:
    node, _ = mig_node(preset)
    return node.gpu_instance_profiles(0)


PROFILES = {preset: _profiles(preset) for preset in WITH_MIG}


def _overlaps(at: Placement, taken: Sequence[Placement]) -> bool:
    return any(at.overlaps(t) for t in taken)


@st.composite
def occupancies(draw: st.DrawFn) -> tuple[str, list[Placement], list[Choice]]:
    """A product, placements held on one of its GPUs (non-overlapping, as instances and
    allocations are), and some of them idle instances a claim may take."""
    preset = draw(st.sampled_from(WITH_MIG))
    choices = [(p, at) for p in PROFILES[preset] for at in p.placements]
    taken: list[Placement] = []
    idle: list[Choice] = []
    for profile, at in draw(st.permutations(choices))[:draw(st.integers(0, 6))]:
        if not _overlaps(at, taken):
            taken.append(at)
            if draw(st.booleans()):
                idle.append((profile, at))
    return preset, taken, idle


@settings(max_examples=300, deadline=None)
@given(occupancies())
def test_any_occupancy_orders_every_placement_once_and_the_first_fit_is_valid(
    case: tuple[str, list[Placement], list[Choice]],
) -> None:
    preset, taken, idle = case
    profiles = PROFILES[preset]
    order = policy_order(profiles, taken, idle)
    everything = [(p, at) for p in profiles for at in p.placements]
    assert sorted(order, key=everything.index) == everything  # a permutation
    for profile in profiles:
        mine = [at for p, at in order if p is profile]
        reusable = [at for p, at in idle if p is profile]
        free = [at for at in profile.placements if not _overlaps(at, taken)]
        # What a claim for the profile gets first fit: an idle instance if one exists, else
        # a free placement (never one over an instance); every free one before any taken one.
        assert set(mine[:len(reusable)]) == set(reusable)
        assert set(mine[len(reusable):len(reusable) + len(free)]) == set(free)
        if reusable or free:
            first = mine[0]
            assert first in reusable or not _overlaps(first, taken)


def _fixed_order(profiles: Sequence[GpuInstanceProfile]) -> list[Choice]:
    """The order Tessera published before it followed occupancy, written out again here as an
    independent oracle: profiles small to large, each profile's placements fewest larger
    placements blocked first, then highest start."""
    def blocked(profile: GpuInstanceProfile, at: Placement) -> int:
        return sum(1 for q in profiles if q.memory_slices > profile.memory_slices
                   for p in q.placements if p.overlaps(at))

    ranked = sorted(profiles, key=lambda p: (p.memory_slices, p.slices, p.memory_mib,
                                             p.nvml_profile))
    return [(p, at) for p in ranked
            for at in sorted(p.placements, key=lambda at: (blocked(p, at), -at.start))]


@pytest.mark.parametrize("preset", WITH_MIG)
def test_on_an_idle_gpu_the_order_is_the_fixed_one(preset: str) -> None:
    assert policy_order(PROFILES[preset]) == _fixed_order(PROFILES[preset])


def _starts(order: list[Choice], name: str, taken: Sequence[Placement]) -> list[int]:
    return [at.start for p, at in order if p.name == name and not _overlaps(at, taken)]


def test_once_slice_0_is_taken_small_profiles_fill_that_side_and_keep_the_3g_at_4() -> None:
    profiles = PROFILES["dgx-a100"]
    taken = [Placement(0, 1)]  # a 1g at slice 0: no 4g or 7g fits on this GPU any more
    fixed = _starts(policy_order(profiles), "1g.10gb", taken)
    ours = _starts(policy_order(profiles, taken), "1g.10gb", taken)
    assert fixed[0] == 6  # the idle-GPU order would cut into slices 4-7 and lose the 3g there
    assert set(ours[:3]) == {1, 2, 3}  # so the next 1g's fill slices 1-3: the 3g at 4 stays
    assert _starts(policy_order(profiles, taken), "2g.20gb", taken)[0] == 2
    # Once a 3g holds slices 4-7 a 2g goes to 2, keeping slices 0-1 together.
    held = [Placement(4, 4)]
    assert _starts(policy_order(profiles, held), "2g.20gb", held) == [2, 0]


def test_an_idle_instance_is_offered_before_any_new_placement() -> None:
    node, _ = mig_node("dgx-a100")
    profile = next(p for p in node.gpu_instance_profiles(0) if p.name == "1g.10gb")
    node.create_gpu_instance(0, profile.id, Placement(0, 1))  # made out of band, no claim
    devices = [d for d in publish(read_inventory(node)).devices
               if d["name"].startswith("gpu-0-")]
    first = next(d for d in devices if d["attributes"]["profile"]["string"] == "1g.10gb")
    assert first["name"] == "gpu-0-mig-1g10gb-19-0"
    # Counted as taken for everything else: the other 1g's now fill slices 1-3 first.
    others = [d["name"] for d in devices if d["attributes"]["profile"]["string"] == "1g.10gb"]
    assert set(others[1:4]) == {f"gpu-0-mig-1g10gb-19-{s}" for s in (1, 2, 3)}


def _gpu_blocks(devices: Sequence[dict[str, object]]) -> list[str]:
    """The GPUs of a device list, in the order their devices come."""
    gpus: list[str] = []
    for d in devices:
        gpu = str(d["name"]).split("-mig-")[0]
        if not gpus or gpus[-1] != gpu:
            gpus.append(gpu)
    return gpus


def _stored(bodies: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    return [{**b, "metadata": {**b["metadata"], "resourceVersion": "1"}}  # type: ignore[dict-item]
            for b in bodies]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_allocation_reorders_its_gpus_slice_alone(layout: Layout) -> None:
    node, _ = mig_node("dgx-a100")
    before = desired_slices(publish(read_inventory(node)), driver=DRIVER, node=NODE,
                            layout=layout)
    stored = _stored(reconcile(before, []).create)
    after = desired_slices(publish(read_inventory(node), taken={3: [Placement(0, 1)]}),
                           driver=DRIVER, node=NODE, layout=layout)
    writes = reconcile(after, stored)
    assert not writes.create
    assert not writes.delete
    [(body, _)] = writes.replace  # one write, at the same pool generation
    assert body["spec"]["pool"]["generation"] == stored[0]["spec"]["pool"]["generation"]
    gpus = _gpu_blocks(body["spec"]["devices"])
    assert "gpu-3" in gpus
    # Same devices in the slice, only their order changed; GPU 3 (now partly used) goes first
    # where it shares the slice with GPU 2.
    old = next(s for s in before if s["metadata"]["name"] == body["metadata"]["name"])
    assert sorted(d["name"] for d in old["spec"]["devices"]) == sorted(
        d["name"] for d in body["spec"]["devices"])
    assert gpus == (["gpu-3"] if layout == "split" else ["gpu-3", "gpu-2"])


def test_in_a_combined_slice_the_fuller_gpu_goes_first() -> None:
    node, _ = mig_node("dgx-a100")
    taken = {0: [Placement(4, 4)], 1: [Placement(0, 4), Placement(4, 2)]}
    slices = desired_slices(publish(read_inventory(node), taken=taken), driver=DRIVER,
                            node=NODE, layout="combined")
    first = slices[0]["spec"]
    assert [c["name"] for c in first["sharedCounters"]] == ["gpu-0-counter-set",
                                                            "gpu-1-counter-set"]
    assert _gpu_blocks(first["devices"]) == ["gpu-1", "gpu-0"]  # 2 slices free before 4
    assert _gpu_blocks(slices[1]["spec"]["devices"]) == ["gpu-2", "gpu-3"]  # both empty


def test_whatever_slice_order_the_scheduler_takes_each_gpus_first_3g_gets_slice_4() -> None:
    node, _ = mig_node("dgx-a100")
    with FakeApiServer() as api:
        api.add_device_class("mig.nvidia.com", [MIG_CLASS])
        for body in reconcile(desired_slices(publish(read_inventory(node)), driver=DRIVER,
                                             node=NODE), []).create:
            api.store.create("resourceslices", "", body)
        allocator = Allocator(api, rng=random.Random(7))
        placed: list[tuple[str, int]] = []
        for i in range(10):
            api.add_claim(f"c{i}", {"devices": {"requests": [{"name": "r", "exactly": {
                "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {
                    "expression": f"device.attributes['{DRIVER}'].profile == '3g.40gb'"}}]}}]}})
            [result] = allocator.allocate(f"c{i}")["allocation"]["devices"]["results"]
            gpu, _, start = result["device"].rpartition("-")
            placed.append((gpu.split("-mig-")[0], int(start)))
    gpus = [g for g, _ in placed]
    assert len(set(gpus)) > 1, "the shuffled walk reaches GPUs other than GPU 0"
    for i, (gpu, start) in enumerate(placed):
        assert start == (0 if gpu in gpus[:i] else 4), placed


# -- the plugin, told of allocations -------------------------------------------------------------


@pytest.fixture
async def plugin(tmp_path: Path, kubelet_dir: Path) -> AsyncIterator[
        tuple[DraPlugin, FakeApiServer, Node]]:
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    # Claims not followed: these tests tell the plugin of allocations by hand, as the claim
    # watch does (prepare-ahead would then also make the instance).
    settings = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
                           resync_seconds=3600, health_seconds=3600, follow_claims=False,
                           prepare_ahead=False)
    with FakeApiServer() as api:
        api.add_device_class("mig.nvidia.com", [MIG_CLASS])
        dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
        plugin = DraPlugin(node, dra, settings)
        await plugin.start()
        try:
            yield plugin, api, node
        finally:
            await plugin.stop()
            await dra.close()


def _slice_writes(api: FakeApiServer, since: int) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in api.requests[since:]
            if "resourceslices" in r.path and r.method in ("POST", "PUT", "DELETE")]


async def test_an_allocation_seen_is_one_write_and_its_prepare_then_none(
    plugin: tuple[DraPlugin, FakeApiServer, Node],
) -> None:
    dra, api, _ = plugin
    await dra.settle()
    api.add_claim("train", {"devices": {"requests": [{"name": "r", "exactly": {
        "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {
            "expression": f"device.attributes['{DRIVER}'].profile == '3g.40gb'"}}]}}]}})
    [result] = Allocator(api).allocate("train")["allocation"]["devices"]["results"]
    assert result["device"] == "gpu-0-mig-3g40gb-9-4"

    mark = len(api.requests)
    dra.set_allocated({0: [Placement(4, 4)]})  # what the claim watch tells the plugin
    await dra.settle()
    assert _slice_writes(api, mark) == [f"{NODE}-{DRIVER}-1"]  # GPU 0's device slice alone
    [gpu0] = [s for s in api.slices(driver=DRIVER, node=NODE)
              if s["metadata"]["name"] == f"{NODE}-{DRIVER}-1"]
    twos = [d["name"] for d in gpu0["spec"]["devices"]
            if d["attributes"]["profile"]["string"] == "2g.20gb"]
    assert twos == ["gpu-0-mig-2g20gb-14-2", "gpu-0-mig-2g20gb-14-0", "gpu-0-mig-2g20gb-14-4"]

    dra.set_allocated({0: [Placement(4, 4)]})  # told again: nothing changed, nothing written
    await dra.settle()
    assert _slice_writes(api, mark) == [f"{NODE}-{DRIVER}-1"]

    mark = len(api.requests)
    claim = api.claim("train")
    devices = await dra.prepare("default", claim["metadata"]["uid"], "train")
    assert [d.device for d in devices] == ["gpu-0-mig-3g40gb-9-4"]
    await dra.settle()
    assert _slice_writes(api, mark) == []  # the occupancy was already published
