"""Claims followed by watch and prepared ahead, end to end: the stand-in kubelet over real
unix-socket gRPC, the fake API server over HTTP through lightkube, and the stand-in
scheduler (allocator and PreBind) with binding conditions.

A claim allocated to the node gets its GI/CI before any NodePrepareResources, and the
kubelet's call is then answered with no request to the API server; an out-of-band instance at
the allocated placement fails the binding and the scheduler's retry lands elsewhere; a claim
deallocated before the kubelet asked is undone; a kill between record and status, a watch
expiry and an API outage all converge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dra_support import GPU_CLASS, MIG_CLASS, Allocator, PluginRig, mig_node
from helpers import until
from tessera.dra.binding import MIG_FAILED, MIG_READY
from tessera.dra.checkpoint import Checkpoint, ClaimRecord
from tessera.dra.server import DraPlugin, DraSettings
from tessera.errors import ConfigError
from tessera.hardware.model import Placement
from tessera.kube.dra import DraApi
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import ClaimRef, TestDraKubelet

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
PLACED = "gpu-0-mig-3g40gb-9-4"  # where first fit in Tessera's order puts the first 3g


def _spec(profile: str, config: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"devices": {"requests": [{"name": "mig", "exactly": {
        "deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
            f'device.attributes["{DRIVER}"].profile == "{profile}"'}}]}}],
        **({"config": config} if config else {})}}


@dataclass
class Rig(PluginRig):
    scheduler: Allocator

    def claim(self, name: str, profile: str = "3g.40gb") -> ClaimRef:
        """A claim for one MIG device of `profile`, allocated."""
        self.api.add_claim(name, _spec(profile))
        self.scheduler.allocate(name)
        return self.ref(name)

    def ref(self, name: str) -> ClaimRef:
        return ClaimRef("default", self.api.claim(name)["metadata"]["uid"], name)

    def instances(self, gpu: int = 0) -> list[tuple[int, int]]:
        """(start, size) of every GPU instance on `gpu` that has its compute instance."""
        return sorted((gi.placement.start, gi.placement.size)
                      for gi in self.node.mig_state(gpu).gpu_instances if gi.compute_instances)

    def record(self, uid: str) -> ClaimRecord | None:
        return Checkpoint(self.settings.checkpoint_file).load().get(uid)

    def conditions(self, name: str, device: str) -> dict[str, dict[str, str]]:
        """The conditions of our entry for `device` in the claim's status, by type."""
        entries = (self.api.claim(name).get("status") or {}).get("devices") or []
        return {c["type"]: c for e in entries if (e["driver"], e["device"]) == (DRIVER, device)
                for c in e["conditions"]}

    def ready(self, name: str, device: str, kind: str = MIG_READY) -> bool:
        return self.conditions(name, device).get(kind, {}).get("status") == "True"

    async def passed(self, name: str) -> None:
        """Wait for a pass of prepare-ahead over the claim as it is now."""
        meta = self.api.claim(name)["metadata"]
        ahead = self.plugin.ahead

        def seen() -> bool:
            view = ahead.converged_on.get(meta["uid"])
            return view is not None and view.resource_version == meta["resourceVersion"]
        await until(seen, f"a pass over ResourceClaim {name}")

    async def passed_without(self, uid: str) -> None:
        """Wait for a pass of prepare-ahead over the claims as they are now, without `uid`."""
        ahead, claims = self.plugin.ahead, self.plugin.claims
        await until(lambda: uid not in claims.items and ahead.converged_on is claims.items,
                    "a pass after the claim left")


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        server.add_device_class("mig.nvidia.com", [MIG_CLASS])
        server.add_device_class("gpu.nvidia.com", [GPU_CLASS])
        yield server



def _settings(tmp: Path, kubelet_dir: Path, *, binding: bool | None = True) -> DraSettings:
    return DraSettings(node_name=NODE, kubelet_dir=kubelet_dir, cdi_dir=tmp / "cdi",
                       registry_check_seconds=0.05, resync_seconds=3600, health_seconds=0.05,
                       binding_conditions=binding)


@asynccontextmanager
async def rig(api: FakeApiServer, tmp: Path, kubelet_dir: Path, *, preset: str = "dgx-a100",
              binding: bool | None = True) -> AsyncIterator[Rig]:
    node, control = mig_node(preset, tmp / "sim.json")
    settings = _settings(tmp, kubelet_dir, binding=binding)
    dra = DraApi.connect(api.kubeconfig(tmp / "kubeconfig"))
    try:
        async with TestDraKubelet(kubelet_dir) as kubelet:
            plugin = DraPlugin(node, dra, settings)
            await plugin.start()
            try:
                await kubelet.wait_registered(DRIVER)
                await until(plugin.claims.synced.is_set, "the claim mirror to list")
                yield Rig(api, dra, kubelet, plugin, node, control, settings, Allocator(api))
            finally:
                await plugin.stop()
    finally:
        await dra.close()


def _requests_during(api: FakeApiServer, start: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in api.requests[start:]]


async def test_a_mig_claim_is_made_at_allocation_and_prepare_needs_no_api_request(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        devices = {d["name"]: d for s in api.slices(node=NODE) for d in s["spec"].get(
            "devices", [])}
        # Every placement needs a creation on these empty GPUs: each one waits on Tessera's
        # conditions, as the scheduler reads them.
        assert {tuple(d.get("bindingConditions", ())) for d in devices.values()} == {
            (MIG_READY,)}
        assert {tuple(d.get("bindingFailureConditions", ())) for d in devices.values()} == {
            (MIG_FAILED,)}

        ref = r.claim("train")
        [result] = api.claim("train")["status"]["allocation"]["devices"]["results"]
        assert result["device"] == PLACED
        assert result["bindingConditions"] == [MIG_READY]
        # Before any NodePrepareResources: the instance at the allocated placement, the
        # claim's status saying so, and the scheduler's PreBind satisfied.
        assert await r.scheduler.bind("train")
        assert r.instances(0) == [(4, 4)]
        [gi] = r.node.mig_state(0).gpu_instances
        mig_uuid = gi.compute_instances[0].uuid
        ready = r.conditions("train", PLACED)
        assert ready["Ready"]["status"] == "True"
        assert mig_uuid in ready[MIG_READY]["message"]
        [entry] = api.claim("train")["status"]["devices"]
        assert entry["data"] == {"uuid": mig_uuid, "gpu": 0, "profile": "3g.40gb",
                                 "placementStart": 4}
        record = r.record(ref.uid)
        assert record is not None
        assert (record.state, record.kubelet) == ("PrepareCompleted", False)

        mutations = r.control.mutations()
        await r.plugin.settle()  # the slices republished after the prepare ahead
        start = len(api.requests)
        answer = (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid]
        assert _requests_during(api, start) == []  # answered from memory
        assert answer.error == ""
        assert answer.devices[0].cdi_device_ids == (f"k8s.{DRIVER}/claim={ref.uid}-{PLACED}",)
        assert r.control.mutations() == mutations
        # The checkpoint learns, after the answer, that the kubelet asked for it.
        await until(lambda: (rec := r.record(ref.uid)) is not None and rec.kubelet,
                    "the record to say the kubelet asked")
        assert await r.kubelet.unprepare(DRIVER, [ref]) == {ref.uid: ""}
        assert r.instances(0) == []
        # Unprepared while still allocated: not prepared ahead again.
        api.set_claim_status("train", api.claim("train")["status"])  # a change to see
        await r.passed("train")
        assert r.instances(0) == []
        assert r.record(ref.uid) is None


async def test_a_whole_gpu_binds_at_once_and_is_prepared_ahead(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir, preset="mixed") as r:  # GPUs 2, 3: no MIG
        gpus = [d for s in api.slices(node=NODE) for d in s["spec"].get("devices", [])
                if d["attributes"]["type"]["string"] == "gpu"]
        assert gpus
        assert not any("bindingConditions" in d for d in gpus)
        api.add_claim("render", {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": "gpu.nvidia.com"}}]}})
        r.scheduler.allocate("render")
        ref = r.ref("render")
        [result] = api.claim("render")["status"]["allocation"]["devices"]["results"]
        assert result["device"] == "gpu-2"
        assert "bindingConditions" not in result
        await until(lambda: r.conditions("render", "gpu-2").get("Ready", {}).get("status")
                    == "True", "the whole GPU prepared ahead")
        assert await r.scheduler.bind("render")
        await r.plugin.settle()  # the slices republished after the prepare ahead
        start = len(api.requests)
        answer = (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid]
        assert _requests_during(api, start) == []
        spec = json.loads(next(r.settings.cdi_dir.glob("*.json")).read_text())
        assert spec["devices"][0]["containerEdits"]["env"] == [
            f"NVIDIA_VISIBLE_DEVICES={r.node.gpu(2).uuid}"]
        assert answer.devices[0].cdi_device_ids == (f"k8s.{DRIVER}/claim={ref.uid}-gpu-2",)


async def test_a_placement_taken_out_of_band_fails_the_binding_and_the_retry_lands_elsewhere(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        # Someone makes a 2g at memory slices 4-5 behind Tessera's back; the slices still
        # offer the 3g at 4 when the scheduler allocates.
        profile = next(p for p in r.node.gpu_instance_profiles(0) if p.name == "2g.20gb")
        r.node.create_gpu_instance(0, profile.id, Placement(4, 2))
        ref = r.claim("late")
        assert api.claim("late")["status"]["allocation"]["devices"]["results"][0][
            "device"] == PLACED
        assert not await r.scheduler.bind("late")
        # The scheduler's unreserve cleared the allocation and the device status.
        assert api.claim("late")["status"] == {}
        assert r.record(ref.uid) is None
        assert [(gi.placement.start, gi.placement.size)
                for gi in r.node.mig_state(0).gpu_instances] == [(4, 2)]
        # The slices stop offering the taken placement; the retry lands on another.
        await until(lambda: PLACED not in {d["name"] for s in api.slices(node=NODE)
                                           for d in s["spec"].get("devices", [])},
                    "the slices to drop the taken placement")
        r.scheduler.allocate("late")
        [result] = api.claim("late")["status"]["allocation"]["devices"]["results"]
        assert result["device"] == "gpu-0-mig-3g40gb-9-0"
        assert await r.scheduler.bind("late")
        assert (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""
        assert [(gi.placement.start, gi.placement.size) for gi in
                sorted(r.node.mig_state(0).gpu_instances, key=lambda g: g.placement.start)
                ] == [(0, 4), (4, 2)]


async def test_mig_failed_carries_the_reason_and_message(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        profile = next(p for p in r.node.gpu_instance_profiles(0) if p.name == "2g.20gb")
        r.node.create_gpu_instance(0, profile.id, Placement(4, 2))
        r.claim("late")
        await until(lambda: r.ready("late", PLACED, MIG_FAILED), "mig-failed")
        conditions = r.conditions("late", PLACED)
        assert conditions[MIG_FAILED]["reason"] == "PlacementTaken"
        assert "is taken on GPU 0 by an instance made outside Tessera (at 4:2)" in \
            conditions[MIG_FAILED]["message"]
        assert conditions["Ready"]["status"] == "False"
        assert conditions[MIG_READY]["status"] == "False"


@pytest.mark.parametrize("how", ["unreserved", "deleted"])
async def test_a_claim_deallocated_before_the_kubelet_asked_is_undone(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path, how: str,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        ref = r.claim("gone")
        await until(lambda: r.ready("gone", PLACED), "the claim prepared ahead")
        assert r.instances(0) == [(4, 4)]
        if how == "unreserved":
            api.set_claim_status("gone", {})
        else:
            api.delete_claim("gone")
        await until(lambda: r.node.mig_state(0).gpu_instances == (), "the instance destroyed")
        await until(lambda: r.record(ref.uid) is None, "the record dropped")
        assert not list(r.settings.cdi_dir.glob("*.json"))


async def test_a_claim_the_kubelet_prepared_waits_for_its_unprepare(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        ref = r.claim("held")
        assert await r.scheduler.bind("held")
        assert (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""
        api.set_claim_status("held", {})
        await r.passed_without(ref.uid)
        assert r.instances(0) == [(4, 4)]
        assert r.record(ref.uid) is not None
        assert await r.kubelet.unprepare(DRIVER, [ref]) == {ref.uid: ""}
        assert r.instances(0) == []


async def test_an_instance_a_process_uses_is_never_released(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        ref = r.claim("busy")
        await until(lambda: r.ready("busy", PLACED), "the claim prepared ahead")
        [gi] = r.node.mig_state(0).gpu_instances
        process = r.control.start_process(gi.compute_instances[0].uuid)
        api.set_claim_status("busy", {})
        await r.passed_without(ref.uid)
        assert r.instances(0) == [(4, 4)]
        assert r.record(ref.uid) is not None
        r.control.stop_process(process.pid)
        r.plugin.claims.changed.set()  # the next pass (a resync) releases it
        await until(lambda: r.record(ref.uid) is None, "the release once the process ended")
        assert r.instances(0) == []


async def test_a_bad_config_fails_the_claim_in_its_status_and_makes_nothing(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir, binding=False) as r:
        api.add_claim("bad", _spec("3g.40gb", [{"opaque": {"driver": DRIVER, "parameters": {
            "apiVersion": "resource.nvidia.com/v1beta1", "kind": "MigDeviceConfig",
            "sharing": {"strategy": "Sliced"}}}}]))
        r.scheduler.allocate("bad")
        ref = r.ref("bad")
        await until(lambda: "Ready" in r.conditions("bad", PLACED), "the failure in the status")
        ready = r.conditions("bad", PLACED)["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "InvalidClaim")
        assert "unknown GPU sharing strategy 'Sliced'" in ready["message"]
        assert MIG_FAILED not in r.conditions("bad", PLACED)  # no binding conditions here
        assert r.node.mig_state(0).gpu_instances == ()
        assert r.record(ref.uid) is None
        # The kubelet's call fails the same way, and writes nothing new.
        version = api.claim("bad")["metadata"]["resourceVersion"]
        answer = (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid]
        assert "unknown GPU sharing strategy 'Sliced'" in answer.error
        await r.plugin.settle()
        assert api.claim("bad")["metadata"]["resourceVersion"] == version
        assert not list(r.settings.cdi_dir.glob("*.json"))


async def test_a_failed_prepare_is_cleared_when_a_later_one_succeeds(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir, binding=False) as r:
        r.control.inject_failure(after=1, code=999,
                                 function="nvmlGpuInstanceCreateComputeInstanceWithPlacement")
        ref = r.claim("flaky")
        await until(lambda: "Ready" in r.conditions("flaky", PLACED), "the failure")
        assert r.conditions("flaky", PLACED)["Ready"]["status"] == "False"
        assert r.node.mig_state(0).gpu_instances == ()  # the half-made instance undone
        r.control.clear_failure()
        answer = (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid]  # the kubelet's retry
        assert answer.error == ""
        await until(lambda: r.conditions("flaky", PLACED)["Ready"]["status"] == "True",
                    "the failure cleared")


async def test_a_watch_expiry_re_lists_and_a_claim_allocated_meanwhile_is_prepared(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        def lists() -> int:
            return sum(1 for q in api.requests if q.method == "GET" and q.path.endswith(
                "/resourceclaims") and q.query.get("watch") not in ("true", "1"))

        listed = lists()
        api.expire_watches()
        r.claim("after-410")
        assert await r.scheduler.bind("after-410")
        assert lists() > listed
        assert r.instances(0) == [(4, 4)]


async def test_an_api_outage_during_prepare_ahead_converges_after_heal(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        api.down()
        ref = r.claim("outage")  # the scheduler writes it; the plugin cannot see it yet
        api.fail_next(2, method="PATCH")  # and the first status writes fail once it can
        api.up()
        assert await r.scheduler.bind("outage")
        assert r.instances(0) == [(4, 4)]
        assert (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""


async def test_a_kill_between_the_record_and_the_status_converges_on_restart(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        api.fail_next(10_000, method="PATCH")  # no status write gets through
        ref = r.claim("train")
        await until(lambda: (rec := r.record(ref.uid)) is not None
                    and rec.state == "PrepareCompleted", "the record")
        assert not r.ready("train", PLACED)
    api.heal()
    # A new process over the same GPUs, checkpoint and claims.
    async with rig(api, tmp_path, kubelet_dir) as again:
        assert again.record(ref.uid) is not None
        assert await again.scheduler.bind("train")
        assert again.instances(0) == [(4, 4)]


async def test_binding_conditions_need_prepare_ahead() -> None:
    with pytest.raises(ConfigError, match="binding conditions need prepare-ahead"):
        DraSettings(node_name=NODE, binding_conditions=True, prepare_ahead=False)
    assert replace(DraSettings(node_name=NODE), binding_conditions=True).prepare_ahead


async def test_a_plugin_stopped_right_after_the_answer_still_records_who_asked(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir) as r:
        ref = r.claim("train")
        assert await r.scheduler.bind("train")
        assert (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""
        await r.plugin.stop()  # before the delayed mark would have been written
        record = r.record(ref.uid)
        assert record is not None
        assert record.kubelet


async def test_a_status_write_the_api_server_refuses_is_not_retried(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir, binding=False) as r:
        api.fail_next(1, status=403, method="PATCH")  # say, an admission policy
        ref = r.claim("train")
        await until(lambda: (rec := r.record(ref.uid)) is not None
                    and rec.state == "PrepareCompleted", "the claim prepared ahead")
        await r.passed("train")
        patches = [q for q in api.requests if q.method == "PATCH"]
        assert [q.status for q in patches] == [403]
        assert r.plugin.reports.unwritten == {}
        # The claim is prepared all the same.
        assert (await r.kubelet.prepare(DRIVER, [ref]))[ref.uid].error == ""


@pytest.mark.parametrize("follow", [True, False])
async def test_a_claim_not_prepared_yet_is_read_from_the_mirror_or_else_with_a_get(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path, follow: bool,
) -> None:
    node, _ = mig_node("dgx-a100", tmp_path / "sim.json")
    settings = replace(_settings(tmp_path, kubelet_dir, binding=False), prepare_ahead=False,
                       follow_claims=follow)
    dra = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    async with TestDraKubelet(kubelet_dir) as kubelet, DraPlugin(node, dra, settings) as plugin:
        await kubelet.wait_registered(DRIVER)
        api.add_claim("c", _spec("1g.10gb"))
        Allocator(api).allocate("c")
        uid = api.claim("c")["metadata"]["uid"]
        if follow:
            await until(lambda: uid in plugin.claims.items, "the mirror to see the claim")
        start = len(api.requests)
        answer = (await kubelet.prepare(DRIVER, [ClaimRef("default", uid, "c")]))[uid]
        assert answer.error == ""
        gets = [r for r in _requests_during(api, start)
                if r == "GET /apis/resource.k8s.io/v1/namespaces/default/resourceclaims/c"]
        assert len(gets) == (0 if follow else 1)
    await dra.close()


@pytest.mark.parametrize("gate_on", [True, False])
async def test_binding_conditions_by_default_wherever_the_api_server_keeps_them(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path, gate_on: bool,
) -> None:
    if not gate_on:
        api.disabled_gates.add("DRADeviceBindingConditions")
    async with rig(api, tmp_path, kubelet_dir, binding=None) as r:
        assert r.plugin.use_binding_conditions is gate_on
        waiting = {tuple(d.get("bindingConditions", ())) for s in api.slices(node=NODE)
                   for d in s["spec"].get("devices", [])
                   if d["attributes"]["type"]["string"] == "mig"}
        assert waiting == ({(MIG_READY,)} if gate_on else {()})
        # Either way the claim is made ahead; the scheduler waits for it only with the gate.
        r.claim("train")
        await until(lambda: r.instances(0) == [(4, 4)], "the instance made at allocation")


async def test_allocations_the_watch_sees_count_as_taken_in_the_order(
    api: FakeApiServer, tmp_path: Path, kubelet_dir: Path,
) -> None:
    async with rig(api, tmp_path, kubelet_dir, binding=False) as r:
        r.claim("train")
        await until(lambda: dict(r.plugin.allocated) == {0: frozenset({Placement(4, 4)})},
                    "the allocated placement counted as taken")
        api.delete_claim("train")
        await until(lambda: not r.plugin.allocated, "the placement freed with its claim")
        await until(lambda: r.instances(0) == [], "the instance made ahead released")
