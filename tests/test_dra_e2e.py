"""The DRA plugin end to end on a simulated node: the stand-in kubelet over real unix-socket
gRPC (registration, DRA v1/v1beta1), the fake API server over HTTP through lightkube, and a
stand-in allocator that allocates from the published slices as the scheduler does.

A claim for `mig.nvidia.com` with `profile == "3g.40gb"` gets a GPU instance created at the
allocated placement, a CDI spec and the CDI ID; unprepare destroys it; a plugin killed
part-way and started again converges through its checkpoint; bad claims get one clear error
and leave nothing behind."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dra_support import GPU_CLASS, MIG_CLASS, Allocator, PluginRig, mig_node
from helpers import until
from tessera.dra.checkpoint import Checkpoint, ClaimRecord, PreparedDevice
from tessera.dra.server import DraPlugin, DraSettings
from tessera.errors import ConfigError
from tessera.hardware.model import Placement
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import ClaimRef, TestDraKubelet

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
NVML_ERROR_UNKNOWN = 999


@dataclass
class Cluster(PluginRig):
    allocator: Allocator
    tmp: Path

    def ref(self, name: str, namespace: str = "default") -> ClaimRef:
        claim = self.api.claim(name, namespace)
        return ClaimRef(namespace, claim["metadata"]["uid"], name)

    def claim_for(self, name: str, profile: str, *, config: list[dict[str, object]] | None = None,
                  allocate: bool = True) -> ClaimRef:
        spec: dict[str, object] = {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com",
            "selectors": [{"cel": {"expression":
                                   f'device.attributes["{DRIVER}"].profile == "{profile}"'}}],
        }}], **({"config": config} if config else {})}}
        self.api.add_claim(name, spec)
        if allocate:
            self.allocator.allocate(name)
        return self.ref(name)

    def instances(self, gpu: int = 0) -> list[tuple[int, int]]:
        """(start, size) of every GPU instance on `gpu`."""
        return sorted((gi.placement.start, gi.placement.size)
                      for gi in self.node.mig_state(gpu).gpu_instances)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        server.add_device_class("mig.nvidia.com", [MIG_CLASS])
        server.add_device_class("gpu.nvidia.com", [GPU_CLASS])
        yield server



def _settings(tmp: Path, kubelet_dir: Path, *, ahead: bool = False) -> DraSettings:
    # Without prepare-ahead: these tests change the node between allocation and the
    # kubelet's call, so they drive creation at prepare (test_dra_ahead covers ahead).
    return DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp / "cdi",
                       registry_check_seconds=0.05, resync_seconds=3600, health_seconds=0.05,
                       prepare_ahead=ahead)


@pytest.fixture
async def cluster(api: FakeApiServer, tmp_path: Path,
                  kubelet_dir: Path) -> AsyncIterator[Cluster]:
    node, control = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = _settings(tmp_path, kubelet_dir)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    async with TestDraKubelet(settings.kubelet_dir) as kubelet:
        plugin = DraPlugin(node, dra, settings)
        await plugin.start()
        await kubelet.wait_registered(DRIVER)
        try:
            yield Cluster(api, dra, kubelet, plugin, node, control, settings, Allocator(api),
                          tmp_path)
        finally:
            await plugin.stop()
    await dra.close()


async def test_the_plugin_registers_and_publishes_every_placement(cluster: Cluster) -> None:
    registration = cluster.kubelet.registrations[DRIVER]
    assert registration.service == "v1.DRAPlugin"
    assert registration.info.endpoint == str(cluster.settings.dra_socket)
    assert list(registration.info.supported_versions) == [
        "v1.DRAPlugin", "v1beta1.DRAPlugin", "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth"]
    assert cluster.plugin.registration.registered
    slices = cluster.api.slices(driver=DRIVER, node=NODE)
    devices = [d["name"] for s in slices for d in s["spec"].get("devices", [])]
    assert len(devices) == 8 * 25  # 25 placements of 7 profiles on each A100
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {len(slices)}
    assert len(await cluster.plugin.publish()) == 0  # nothing changed: nothing written


async def test_a_3g_claim_gets_an_instance_at_its_placement_a_cdi_spec_and_id(
    cluster: Cluster,
) -> None:
    ref = cluster.claim_for("train", "3g.40gb")
    [result] = cluster.api.claim("train")["status"]["allocation"]["devices"]["results"]
    # First fit in Tessera's order: the 3g at slice 4, keeping slice 0 for a 4g or 7g.
    assert result["device"] == "gpu-0-mig-3g40gb-9-4"
    writes_before = len(cluster.api.requests)

    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert answer.error == ""
    [device] = answer.devices
    cdi_id = f"k8s.gpu.nvidia.com/claim={ref.uid}-gpu-0-mig-3g40gb-9-4"
    assert device.cdi_device_ids == (cdi_id,)
    assert (device.pool_name, device.device_name, device.request_names) == (
        NODE, "gpu-0-mig-3g40gb-9-4", ("mig",))
    assert cluster.instances(0) == [(4, 4)]
    [gi] = cluster.node.mig_state(0).gpu_instances
    mig_uuid = gi.compute_instances[0].uuid

    spec = json.loads((cluster.settings.cdi_dir / f"k8s.gpu.nvidia.com-claim_{ref.uid}.json")
                      .read_text())
    assert spec["cdiVersion"] == "1.1.0"
    assert spec["kind"] == "k8s.gpu.nvidia.com/claim"
    [entry] = spec["devices"]
    assert entry["name"] == f"{ref.uid}-gpu-0-mig-3g40gb-9-4"
    assert entry["containerEdits"]["env"] == [f"NVIDIA_VISIBLE_DEVICES={mig_uuid}"]
    # The claim says what was made for it.
    await cluster.plugin.settle()
    [status] = cluster.api.claim("train")["status"]["devices"]
    assert (status["driver"], status["pool"], status["device"]) == (
        DRIVER, NODE, "gpu-0-mig-3g40gb-9-4")
    assert status["data"] == {"uuid": mig_uuid, "gpu": 0, "profile": "3g.40gb",
                              "placementStart": 4}
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Ready", "True")]

    # The instance is published as the placement it was made at; GPU 0's occupancy changed,
    # so its slice alone is rewritten, in the order that follows it (a plugin told of the
    # allocation before, `set_allocated`, has done that already: test_dra_order.py).
    assert [r.path.rsplit("/", 1)[1] for r in cluster.api.requests[writes_before:]
            if r.method in ("POST", "PUT", "DELETE") and "resourceslices" in r.path] == [
        f"{NODE}-{DRIVER}-1"]

    # Idempotent: the same claim again changes nothing on the GPUs.
    mutations = cluster.control.mutations()
    again = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert again == answer
    assert cluster.control.mutations() == mutations

    # The next 3g goes to slice 0 of the same GPU: the counters the first one took are gone.
    second = cluster.claim_for("train-2", "3g.40gb")
    [result] = cluster.api.claim("train-2")["status"]["allocation"]["devices"]["results"]
    assert result["device"] == "gpu-0-mig-3g40gb-9-0"
    assert (await cluster.kubelet.prepare(DRIVER, [second]))[second.uid].error == ""
    assert cluster.instances(0) == [(0, 4), (4, 4)]

    assert await cluster.kubelet.unprepare(DRIVER, [ref]) == {ref.uid: ""}
    assert cluster.instances(0) == [(0, 4)]
    assert not (cluster.settings.cdi_dir / f"k8s.gpu.nvidia.com-claim_{ref.uid}.json").exists()
    assert await cluster.kubelet.unprepare(DRIVER, [ref]) == {ref.uid: ""}  # idempotent
    assert set(Checkpoint(cluster.settings.checkpoint_file).load()) == {second.uid}


async def test_a_half_made_instance_is_rolled_back(cluster: Cluster) -> None:
    ref = cluster.claim_for("train", "3g.40gb")
    cluster.control.inject_failure(after=1, code=NVML_ERROR_UNKNOWN,
                                   function="nvmlGpuInstanceCreateComputeInstanceWithPlacement")
    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert "destroyed again" in answer.error
    assert answer.devices == ()
    assert cluster.instances(0) == []
    assert Checkpoint(cluster.settings.checkpoint_file).load() == {}
    assert not list(cluster.settings.cdi_dir.glob("*.json"))
    # The kubelet retries; now it works.
    cluster.control.clear_failure()
    assert (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""
    assert cluster.instances(0) == [(4, 4)]


async def test_a_plugin_killed_after_creating_converges_when_started_again(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    node, control = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = _settings(tmp_path, kubelet_dir)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    allocator = Allocator(api)
    async with TestDraKubelet(settings.kubelet_dir) as kubelet:
        plugin = DraPlugin(node, dra, settings)
        await plugin.start()
        await kubelet.wait_registered(DRIVER)
        spec = {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
                f'device.attributes["{DRIVER}"].profile == "3g.40gb"'}}]}}]}}
        api.add_claim("train", spec)
        allocator.allocate("train")
        uid = api.claim("train")["metadata"]["uid"]
        ref = ClaimRef("default", uid, "train")
        # The state a kill leaves between creating the instance and writing the CDI spec:
        # the record says PrepareStarted, the instance exists, no spec.
        await plugin.stop()
        profile = next(p for p in node.gpu_instance_profiles(0) if p.name == "3g.40gb")
        gi = node.create_gpu_instance(0, profile.id, Placement(4, 4))
        full = next(c for c in node.compute_instance_profiles(profile) if c.slices == 3)
        node.create_compute_instance(0, gi, full.id, full.placements[0])
        Checkpoint(settings.checkpoint_file).put(ClaimRecord(uid, "default", "train",
            "PrepareStarted", (PreparedDevice("gpu-0-mig-3g40gb-9-4", NODE, ("mig",), 0,
                                              ("3g.40gb", 4)),)))

        # A new process, a new view of the same GPUs: it adopts the instance, creates nothing.
        restarted_node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
        restarted = DraPlugin(restarted_node, dra, settings)
        await restarted.start()
        await kubelet.wait_for(lambda k: any(r.socket == settings.registration_socket
                                             for r in k.history[1:]), what="re-registration")
        await kubelet.wait_registered(DRIVER)
        mutations = control.mutations()
        answer = (await kubelet.prepare(DRIVER, [ref]))[uid]
        assert answer.error == ""
        assert answer.devices[0].cdi_device_ids == (
            f"k8s.gpu.nvidia.com/claim={uid}-gpu-0-mig-3g40gb-9-4",)
        assert control.mutations() == mutations
        assert Checkpoint(settings.checkpoint_file).load()[uid].state == "PrepareCompleted"
        assert await kubelet.unprepare(DRIVER, [ref]) == {uid: ""}
        assert restarted_node.mig_state(0).gpu_instances == ()
        await restarted.stop()
    await dra.close()


@pytest.mark.parametrize(("config", "message"), [
    ([{"opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "resource.nvidia.com/v1beta1", "kind": "MigDeviceConfig",
        "sharing": "TimeSlicing"}}}],
     "MigDeviceConfig.sharing must be an object with a `strategy`"),
    ([{"opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "resource.nvidia.com/v1beta1", "kind": "MigDeviceConfig",
        "shareing": {"strategy": "TimeSlicing"}}}}],
     "MigDeviceConfig has no field 'shareing'"),
    ([{"opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "resource.nvidia.com/v1beta1", "kind": "MigDeviceConfig",
        "sharing": {"strategy": "Sliced"}}}}],
     "unknown GPU sharing strategy 'Sliced'"),
    ([{"opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"}}}],
     "a GpuConfig does not apply to mig device"),
    ([{"opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "resource.nvidia.com/v1", "kind": "MigDeviceConfig"}}}],
     "apiVersion 'resource.nvidia.com/v1' is not"),
])
async def test_a_bad_opaque_config_is_one_clear_error_and_changes_nothing(
    cluster: Cluster, config: list[dict[str, object]], message: str,
) -> None:
    ref = cluster.claim_for("bad", "3g.40gb", config=config)
    mutations = cluster.control.mutations()
    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert message in answer.error
    assert "ResourceClaim default/bad" in answer.error
    assert cluster.control.mutations() == mutations
    assert Checkpoint(cluster.settings.checkpoint_file).load() == {}
    assert not list(cluster.settings.cdi_dir.glob("*.json"))


async def test_a_supported_config_prepares_like_none(cluster: Cluster) -> None:
    ref = cluster.claim_for("shared", "1g.10gb", config=[{"requests": ["mig"], "opaque": {
        "driver": DRIVER, "parameters": {
            "apiVersion": "resource.nvidia.com/v1beta1", "kind": "MigDeviceConfig",
            "sharing": {"strategy": "TimeSlicing"}}}}])
    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert answer.error == ""
    assert cluster.instances(0) == [(6, 1)]  # the first 1g from the high end


async def test_claims_this_node_cannot_serve_get_a_reason_each(cluster: Cluster) -> None:
    missing = cluster.claim_for("missing-device", "3g.40gb", allocate=False)
    cluster.api.set_claim_status("missing-device", {"allocation": {"devices": {"results": [
        {"request": "mig", "driver": DRIVER, "pool": NODE, "device": "gpu-9-mig-3g40gb-9-4"}]}}})
    other_pool = cluster.claim_for("other-node", "3g.40gb", allocate=False)
    cluster.api.set_claim_status("other-node", {"allocation": {"devices": {"results": [
        {"request": "mig", "driver": DRIVER, "pool": "node-b", "device": "gpu-0"}]}}})
    unallocated = cluster.claim_for("pending", "3g.40gb", allocate=False)
    replaced = ClaimRef("default", "0000-stale-uid", "pending")
    gone = ClaimRef("default", "uid-of-nothing", "deleted")
    mutations = cluster.control.mutations()
    answers = await cluster.kubelet.prepare(
        DRIVER, [missing, other_pool, unallocated, replaced, gone])
    assert "device gpu-9-mig-3g40gb-9-4 is not on this node" in answers[missing.uid].error
    assert "pool 'node-b', not this node's pool 'node-a'" in answers[other_pool.uid].error
    assert "not allocated" in answers[unallocated.uid].error
    assert "it was deleted and created again" in answers[replaced.uid].error
    assert "does not exist" in answers[gone.uid].error
    assert cluster.control.mutations() == mutations
    assert not list(cluster.settings.cdi_dir.glob("*.json"))


async def test_a_device_is_never_prepared_for_two_claims(cluster: Cluster) -> None:
    first = cluster.claim_for("first", "3g.40gb")
    assert (await cluster.kubelet.prepare(DRIVER, [first]))[first.uid].error == ""
    copy = cluster.claim_for("copy", "3g.40gb", allocate=False)
    cluster.api.set_claim_status("copy", cluster.api.claim("first")["status"])
    answer = (await cluster.kubelet.prepare(DRIVER, [copy]))[copy.uid]
    assert "already prepared for ResourceClaim default/first" in answer.error


async def test_the_plugin_registers_again_when_the_kubelets_registry_is_wiped(
    cluster: Cluster,
) -> None:
    served = cluster.plugin.registration.served
    await cluster.kubelet.wipe()
    await cluster.kubelet.wait_registered(DRIVER)
    assert cluster.plugin.registration.served > served
    ref = cluster.claim_for("after-restart", "1g.10gb")
    assert (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""


async def test_a_v1beta1_kubelet_gets_the_v1beta1_service(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = _settings(tmp_path, kubelet_dir)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    async with TestDraKubelet(settings.kubelet_dir, services=["v1beta1.DRAPlugin"]) as kubelet, \
            DraPlugin(node, dra, settings):
        registration = await kubelet.wait_registered(DRIVER)
        assert registration.service == "v1beta1.DRAPlugin"
        api.add_claim("c", {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com"}}]}})
        Allocator(api).allocate("c")
        uid = api.claim("c")["metadata"]["uid"]
        answer = (await kubelet.prepare(DRIVER, [ClaimRef("default", uid, "c")]))[uid]
        assert answer.error == ""
        assert answer.devices[0].device_name == "gpu-0-mig-1g10gb-19-6"
    await dra.close()


async def test_a_second_plugin_under_the_same_name_refuses_to_start(cluster: Cluster) -> None:
    other = DraPlugin(cluster.node, cluster.dra, cluster.settings)
    with pytest.raises(ConfigError, match=r"another DRA plugin is registered as gpu\.nvidia\.com"):
        await other.start()
    assert cluster.settings.registration_socket.is_socket()  # the first one is untouched


async def test_a_placement_taken_out_of_band_fails_with_the_reason(cluster: Cluster) -> None:
    ref = cluster.claim_for("late", "3g.40gb")  # allocated gpu-0-mig-3g40gb-9-4
    profile = next(p for p in cluster.node.gpu_instance_profiles(0) if p.name == "2g.20gb")
    cluster.node.create_gpu_instance(0, profile.id, Placement(4, 2))  # someone else's
    mutations = cluster.control.mutations()
    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert "placement of device gpu-0-mig-3g40gb-9-4 (memory slices 4:4) is taken on GPU 0 " \
        "by an instance made outside Tessera (at 4:2)" in answer.error
    assert cluster.control.mutations() == mutations
    assert cluster.instances(0) == [(4, 2)]
    # The slices stop offering it, so the next allocation lands elsewhere.
    await cluster.plugin.settle()
    await cluster.plugin.publish()
    again = cluster.claim_for("late-2", "3g.40gb")
    assert (await cluster.kubelet.prepare(DRIVER, [again]))[again.uid].error == ""
    assert cluster.instances(0) == [(0, 4), (4, 2)]


async def test_a_gpu_that_falls_off_the_bus_turns_its_devices_unhealthy(cluster: Cluster) -> None:
    registration = cluster.kubelet.registrations[DRIVER]
    await cluster.kubelet.wait_for(lambda k: len(registration.health) == 8 * 25,
                                   what="the first health report")
    assert set(registration.health.values()) == {"HEALTHY"}
    cluster.control.raise_xid(3, 79)  # XID 79: the GPU has fallen off the bus
    await cluster.kubelet.wait_for(
        lambda k: "UNHEALTHY" in registration.health.values(), what="the lost GPU reported")
    unhealthy = {device for (_, device), h in registration.health.items() if h == "UNHEALTHY"}
    assert unhealthy == {device for (_, device) in registration.health
                         if device.startswith("gpu-3-")}
    assert len(unhealthy) == 25


async def test_mig_capability_nodes_come_from_the_drivers_mig_minors_table(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    # The table as the driver writes it in /proc/driver/nvidia-caps/mig-minors.
    minors = tmp_path / "mig-minors"
    lines = ["config 1", "monitor 2"]
    for gi in range(15):
        lines.append(f"gpu0/gi{gi}/access {100 + gi}")
        lines += [f"gpu0/gi{gi}/ci{ci}/access {200 + 10 * gi + ci}" for ci in range(8)]
    minors.write_text("\n".join(lines) + "\n")
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
                           registry_check_seconds=0.05, resync_seconds=3600, mig_minors=minors,
                           prepare_ahead=False)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    async with TestDraKubelet(kubelet_dir) as kubelet, DraPlugin(node, dra, settings):
        await kubelet.wait_registered(DRIVER)
        api.add_claim("c", {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com"}}]}})
        Allocator(api).allocate("c")
        uid = api.claim("c")["metadata"]["uid"]
        assert (await kubelet.prepare(DRIVER, [ClaimRef("default", uid, "c")]))[uid].error == ""
        [gi] = node.mig_state(0).gpu_instances
        ci = gi.compute_instances[0]
        spec = json.loads(next(settings.cdi_dir.glob("*.json")).read_text())
        nodes = [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]]
        assert nodes == [f"/dev/nvidia{node.gpu(0).minor_number}",
                         f"/dev/nvidia-caps/nvidia-cap{100 + gi.id}",
                         f"/dev/nvidia-caps/nvidia-cap{200 + 10 * gi.id + ci.id}"]
        assert [n["path"] for n in spec["containerEdits"]["deviceNodes"]] == [
            "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    await dra.close()


async def test_the_134_layout_serves_the_same_allocation(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp_path / "cdi",
                           registry_check_seconds=0.05, resync_seconds=3600, layout="combined",
                           prepare_ahead=False)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    async with TestDraKubelet(kubelet_dir) as kubelet, DraPlugin(node, dra, settings):
        await kubelet.wait_registered(DRIVER)
        slices = api.slices(node=NODE)
        assert all(s["spec"].get("sharedCounters") and s["spec"].get("devices") for s in slices)
        assert len(slices) == 4  # two GPUs (2 x 15 counters) per slice
        api.add_claim("c", {"devices": {"requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
                f'device.attributes["{DRIVER}"].profile == "3g.40gb"'}}]}}]}})
        Allocator(api).allocate("c")
        [result] = api.claim("c")["status"]["allocation"]["devices"]["results"]
        assert result["device"] == "gpu-0-mig-3g40gb-9-4"
        uid = api.claim("c")["metadata"]["uid"]
        assert (await kubelet.prepare(DRIVER, [ClaimRef("default", uid, "c")]))[uid].error == ""
    await dra.close()


async def test_unprepare_never_destroys_an_instance_a_process_uses(cluster: Cluster) -> None:
    ref = cluster.claim_for("busy", "3g.40gb")
    assert (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""
    [gi] = cluster.node.mig_state(0).gpu_instances
    process = cluster.control.start_process(gi.compute_instances[0].uuid)
    answer = await cluster.kubelet.unprepare(DRIVER, [ref])
    assert f"used by PIDs {process.pid}" in answer[ref.uid]
    assert cluster.instances(0) == [(4, 4)]
    assert Checkpoint(cluster.settings.checkpoint_file).load()[ref.uid].state == \
        "PrepareCompleted"
    assert list(cluster.settings.cdi_dir.glob("*.json"))  # still usable by the container
    # The container exits; the kubelet's retry goes through.
    cluster.control.stop_process(process.pid)
    assert await cluster.kubelet.unprepare(DRIVER, [ref]) == {ref.uid: ""}
    assert cluster.instances(0) == []


KILLED_AT = ["after the record", "after the GPU instance", "after the compute instance",
             "after the CDI spec"]


@pytest.mark.parametrize("killed_at", range(len(KILLED_AT)), ids=KILLED_AT)
@pytest.mark.parametrize("then", ["prepare", "unprepare", "ahead"])
async def test_a_plugin_killed_at_any_step_converges_when_started_again(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path, killed_at: int, then: str,
) -> None:
    """`ahead`: the kill came while preparing the claim ahead, at allocation; the restarted
    plugin finishes it by itself, before any call from the kubelet."""
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = _settings(tmp_path, kubelet_dir, ahead=then == "ahead")
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    spec = {"devices": {"requests": [{"name": "mig", "exactly": {
        "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
            f'device.attributes["{DRIVER}"].profile == "3g.40gb"'}}]}}]}}
    api.add_claim("train", spec)
    device = "gpu-0-mig-3g40gb-9-4"  # what the allocator gives it (see the 3g test above)
    api.set_claim_status("train", {"allocation": {"devices": {"results": [
        {"request": "mig", "driver": DRIVER, "pool": NODE, "device": device}]}}})
    uid = api.claim("train")["metadata"]["uid"]
    ref = ClaimRef("default", uid, "train")
    # What the killed plugin left, step by step, in the order prepare takes them.
    Checkpoint(settings.checkpoint_file).put(ClaimRecord(uid, "default", "train",
        "PrepareStarted", (PreparedDevice(device, NODE, ("mig",), 0, ("3g.40gb", 4)),),
        kubelet=then != "ahead"))
    profile = next(p for p in node.gpu_instance_profiles(0) if p.name == "3g.40gb")
    if killed_at >= 1:
        gi = node.create_gpu_instance(0, profile.id, Placement(4, 4))
    if killed_at >= 2:
        full = next(c for c in node.compute_instance_profiles(profile) if c.slices == 3)
        node.create_compute_instance(0, gi, full.id, full.placements[0])
    if killed_at >= 3:
        settings.cdi_dir.mkdir(parents=True)
        (settings.cdi_dir / f"k8s.gpu.nvidia.com-claim_{uid}.json").write_text("{}")

    restarted, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    async with TestDraKubelet(kubelet_dir) as kubelet, DraPlugin(restarted, dra, settings):
        await kubelet.wait_registered(DRIVER)
        if then in ("prepare", "ahead"):
            if then == "ahead":
                await until(lambda: bool((api.claim("train")["status"].get("devices") or [{}])[
                    0].get("conditions")), "the claim prepared ahead")
                [entry] = api.claim("train")["status"]["devices"]
                assert [(c["type"], c["status"]) for c in entry["conditions"]] == [
                    ("Ready", "True")]
            else:
                answer = (await kubelet.prepare(DRIVER, [ref]))[uid]
                assert answer.error == ""
            [gi_now] = restarted.mig_state(0).gpu_instances
            assert gi_now.placement == Placement(4, 4)
            assert len(gi_now.compute_instances) == 1
            record = Checkpoint(settings.checkpoint_file).load()[uid]
            assert record.state == "PrepareCompleted"
            assert record.kubelet == (then == "prepare")
            written = json.loads(next(settings.cdi_dir.glob("*.json")).read_text())
            assert written["devices"][0]["containerEdits"]["env"] == [
                f"NVIDIA_VISIBLE_DEVICES={gi_now.compute_instances[0].uuid}"]
        else:
            assert await kubelet.unprepare(DRIVER, [ref]) == {uid: ""}
            assert restarted.mig_state(0).gpu_instances == ()
            assert Checkpoint(settings.checkpoint_file).load() == {}
            assert not list(settings.cdi_dir.glob("*.json"))
    await dra.close()


async def test_claims_written_for_nvidias_driver_work_unchanged(cluster: Cluster) -> None:
    # As NVIDIA's examples select MIG devices: by capacity through its DeviceClass.
    cluster.api.add_claim("by-memory", {"devices": {"requests": [{"name": "mig", "exactly": {
        "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
            "device.capacity['gpu.nvidia.com'].memory.isGreaterThan(quantity('10Gi'))"}}]}}]}})
    cluster.allocator.allocate("by-memory")
    [result] = cluster.api.claim("by-memory")["status"]["allocation"]["devices"]["results"]
    # Smallest first: the first device over 10 GiB is a 1g.20gb, from the high end.
    assert result["device"] == "gpu-0-mig-1g20gb-15-6"
    ref = cluster.ref("by-memory")
    assert (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""
    assert cluster.instances(0) == [(6, 2)]
    # And by parent and product attributes, with NVIDIA's MigDeviceConfig.
    parent = cluster.node.gpu(1).uuid
    cluster.api.add_claim("pinned", {"devices": {
        "requests": [{"name": "mig", "exactly": {
            "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
                f"device.attributes['gpu.nvidia.com'].parentUUID == '{parent}' && "
                "device.attributes['gpu.nvidia.com'].profile == '2g.20gb' && "
                "device.attributes['gpu.nvidia.com'].productName.startsWith('NVIDIA A100')"}}]}}],
        "config": [{"requests": ["mig"], "opaque": {"driver": DRIVER, "parameters": {
            "apiVersion": "resource.nvidia.com/v1beta1", "kind": "MigDeviceConfig",
            "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {
                "interval": "Default"}}}}}]}})
    cluster.allocator.allocate("pinned")
    ref = cluster.ref("pinned")
    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert answer.error == ""
    assert answer.devices[0].device_name == "gpu-1-mig-2g20gb-14-4"
    assert cluster.instances(1) == [(4, 2)]


async def test_a_whole_gpu_claim_with_nvidias_gpuconfig_gets_the_gpu(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    node, control = mig_node("mixed", tmp_path / "sim.json")  # GPUs 2 and 3: L40S, no MIG
    settings = _settings(tmp_path, kubelet_dir)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    async with TestDraKubelet(kubelet_dir) as kubelet, DraPlugin(node, dra, settings):
        await kubelet.wait_registered(DRIVER)
        api.add_claim("render", {"devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}],
            "config": [{"opaque": {"driver": DRIVER, "parameters": {
                "apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig",
                "sharing": {"strategy": "TimeSlicing"}}}}]}})
        Allocator(api).allocate("render")
        uid = api.claim("render")["metadata"]["uid"]
        mutations = control.mutations()
        answer = (await kubelet.prepare(DRIVER, [ClaimRef("default", uid, "render")]))[uid]
        assert answer.error == ""
        assert answer.devices[0].device_name == "gpu-2"
        # A whole GPU: nothing to create; TimeSlicing sets its interval (Default), as
        # NVIDIA's driver does.
        assert control.mutations() == mutations + 1
        assert control.time_slices()[2] == 0
        spec = json.loads(next(settings.cdi_dir.glob("*.json")).read_text())
        assert spec["devices"][0]["containerEdits"]["env"] == [
            f"NVIDIA_VISIBLE_DEVICES={node.gpu(2).uuid}"]
    await dra.close()


async def test_an_unwritable_cdi_directory_is_one_clear_error_and_nothing_half_made(
    cluster: Cluster,
) -> None:
    cluster.settings.cdi_dir.parent.mkdir(parents=True, exist_ok=True)
    cluster.settings.cdi_dir.write_text("not a directory")
    ref = cluster.claim_for("train", "3g.40gb")
    answer = (await cluster.kubelet.prepare(DRIVER, [ref]))[ref.uid]
    assert "ResourceClaim default/train" in answer.error
    assert str(cluster.settings.cdi_dir) in answer.error
    assert "destroyed again" in answer.error
    assert cluster.instances(0) == []
    assert Checkpoint(cluster.settings.checkpoint_file).load() == {}
