"""The DRA seam (`tessera.kube.dra`) against the fake API server over real HTTP through
lightkube: one node's ResourceSlices, claims and the claim status subresource."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest

from helpers import until
from tessera.kube.dra import DraApi, DraApiError, claim_mirror
from tessera.kube.testing import FakeApiServer


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
async def dra(api: FakeApiServer, tmp_path: Path) -> AsyncIterator[DraApi]:
    client = DraApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
    yield client
    await client.close()


def _slice(name: str, node: str, devices: list[str]) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {
        "driver": "gpu.nvidia.com", "nodeName": node,
        "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
        "devices": [{"name": d, "attributes": {"type": {"string": "gpu"}}} for d in devices]}}


async def test_slices_are_listed_per_node_and_driver(api: FakeApiServer, dra: DraApi) -> None:
    await dra.create_slice(_slice("a-0", "node-a", ["gpu-0"]))
    await dra.create_slice(_slice("b-0", "node-b", ["gpu-0", "gpu-1"]))
    mine = await dra.node_slices("gpu.nvidia.com", "node-a")
    assert [s["metadata"]["name"] for s in mine] == ["a-0"]
    assert mine[0]["apiVersion"] == "resource.k8s.io/v1"
    assert await dra.node_slices("other.example.com", "node-a") == []
    paths = {r.path for r in api.requests}
    assert "/apis/resource.k8s.io/v1/resourceslices" in paths


async def test_a_stale_replace_is_a_conflict_and_changes_nothing(
    api: FakeApiServer, dra: DraApi
) -> None:
    made = await dra.create_slice(_slice("a-0", "node-a", ["gpu-0"]))
    version = made["metadata"]["resourceVersion"]
    await dra.replace_slice(_slice("a-0", "node-a", ["gpu-0", "gpu-1"]), version)
    with pytest.raises(DraApiError, match="409") as raised:
        await dra.replace_slice(_slice("a-0", "node-a", ["gpu-9"]), version)
    assert raised.value.status == 409
    [stored] = api.slices(node="node-a")
    assert [d["name"] for d in stored["spec"]["devices"]] == ["gpu-0", "gpu-1"]
    await dra.delete_slice("a-0")
    await dra.delete_slice("a-0")  # gone already: not an error
    assert api.slices() == []


async def test_claim_status_is_written_only_through_its_subresource(
    api: FakeApiServer, dra: DraApi
) -> None:
    spec = {"devices": {"requests": [{"name": "gpu", "exactly": {
        "deviceClassName": "gpu.nvidia.com"}}]}}
    api.add_claim("train", spec, namespace="ml")
    assert await dra.claim("ml", "missing") is None
    claim = await dra.claim("ml", "train")
    assert claim is not None
    assert claim["spec"] == spec
    assert "status" not in claim or not claim["status"]

    await dra.patch_claim_status("ml", "train", {"devices": [
        {"driver": "gpu.nvidia.com", "pool": "node-a", "device": "gpu-0"}]})
    stored = api.claim("train", "ml")
    assert stored["status"]["devices"][0]["device"] == "gpu-0"
    assert stored["spec"] == spec

    # A merge patch of the claim itself cannot touch the status, as kube-apiserver's strategy.
    url = f"{api.url}/apis/resource.k8s.io/v1/namespaces/ml/resourceclaims/train"
    answer = httpx2.patch(url, json={"status": {"devices": []}, "metadata": {"labels": {"a": "b"}}},
                          headers={"Authorization": f"Bearer {api.token}",
                                   "Content-Type": "application/merge-patch+json"})
    assert answer.status_code == 200
    stored = api.claim("train", "ml")
    assert stored["metadata"]["labels"] == {"a": "b"}
    assert stored["status"]["devices"][0]["device"] == "gpu-0"


async def test_core_paths_do_not_serve_resource_objects(api: FakeApiServer) -> None:
    answer = httpx2.get(f"{api.url}/api/v1/resourceslices",
                        headers={"Authorization": f"Bearer {api.token}"})
    assert answer.status_code == 404


async def test_version_and_discovery_are_what_the_server_serves(
    api: FakeApiServer, dra: DraApi
) -> None:
    assert (await dra.server_version())["minor"] == "35"
    assert await dra.serves_resource_v1()
    api.set_version("v1.34.3-eks-4f2a", minor="34+")
    assert await dra.server_version() == {"major": "1", "minor": "34+",
                                          "gitVersion": "v1.34.3-eks-4f2a",
                                          "platform": "linux/amd64"}
    api.resource_v1 = False  # a 1.33 server: no resource.k8s.io/v1 at all
    assert not await dra.serves_resource_v1()
    with pytest.raises(DraApiError, match="404"):
        await dra.create_slice(_slice("a-0", "node-a", ["gpu-0"]))


async def test_a_disabled_gate_drops_its_fields_unless_already_stored(
    api: FakeApiServer, dra: DraApi
) -> None:
    body = _slice("a-0", "node-a", ["gpu-0"])
    body["spec"]["devices"][0]["taints"] = [  # type: ignore[index]
        {"key": "gpu.nvidia.com/xid", "value": "48", "effect": "NoSchedule"}]
    api.disabled_gates.add("DRADeviceTaints")
    probe = await dra.create_slice(body, dry_run=True)
    assert "taints" not in probe["spec"]["devices"][0]
    assert api.slices() == [], "a dry run stores nothing"
    made = await dra.create_slice(body)
    assert "taints" not in made["spec"]["devices"][0], "dropped silently, as kube-apiserver"
    api.disabled_gates.clear()
    kept = await dra.replace_slice(body, made["metadata"]["resourceVersion"])
    assert kept["spec"]["devices"][0]["taints"][0]["value"] == "48"
    # Turned off again: a stored object that already uses the field keeps it on update.
    api.disabled_gates.add("DRADeviceTaints")
    again = await dra.replace_slice(body, kept["metadata"]["resourceVersion"])
    assert again["spec"]["devices"][0]["taints"][0]["value"] == "48"


def _allocated(api: FakeApiServer, name: str, pool: str, *, namespace: str = "default") -> None:
    api.add_claim(name, {"devices": {"requests": []}}, namespace=namespace)
    api.set_claim_status(name, {"allocation": {"devices": {"results": [
        {"request": "r", "driver": "gpu.nvidia.com", "pool": pool, "device": "gpu-0"}]}}},
        namespace)


async def test_the_claim_mirror_keeps_only_claims_allocated_from_its_pool(
    api: FakeApiServer, dra: DraApi,
) -> None:
    _allocated(api, "mine", "node-a", namespace="ml")
    _allocated(api, "theirs", "node-b")
    api.add_claim("pending", {"devices": {"requests": []}})
    mirror = claim_mirror(dra, "gpu.nvidia.com", "node-a")
    task = asyncio.create_task(mirror.run())
    try:
        await until(mirror.synced.is_set, "the first list")
        assert {(v.namespace, v.name) for v in mirror.items.values()} == {("ml", "mine")}
        # Allocated later, in another namespace: the watch brings it in.
        api.set_claim_status("pending", {"allocation": {"devices": {"results": [
            {"request": "r", "driver": "gpu.nvidia.com", "pool": "node-a", "device": "gpu-1"}
        ]}}})
        await until(lambda: {v.name for v in mirror.items.values()} == {"mine", "pending"},
                    "the newly allocated claim")
        # Deallocated (the scheduler's unreserve): it leaves; deleted: it leaves too.
        api.set_claim_status("pending", {})
        api.delete_claim("mine", "ml")
        await until(lambda: not mirror.items, "both claims gone")
        # A 410 re-lists and finds what changed meanwhile.
        api.expire_watches()
        _allocated(api, "after", "node-a")
        await until(lambda: {v.name for v in mirror.items.values()} == {"after"},
                    "the claim allocated across the expiry")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_unreachable_api_server_is_a_dra_api_error_naming_the_claim(
    api: FakeApiServer, dra: DraApi,
) -> None:
    api.down()
    with pytest.raises(DraApiError, match="reading ResourceClaim ml/train: the API server "
                                          "cannot be reached"):
        await dra.claim("ml", "train")
    with pytest.raises(DraApiError, match="writing the status of ResourceClaim ml/train"):
        await dra.patch_claim_status("ml", "train", {"devices": []})
