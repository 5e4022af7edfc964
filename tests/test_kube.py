"""The Kubernetes seam, driven through the real lightkube client over HTTP against
`FakeApiServer`: what it reads, what it sends (asserted on the server's request log), and
how it rides out an API server that expires watches, goes down, throttles or conflicts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import lightkube
import pytest
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from helpers import until
from tessera.errors import ConfigError, PermanentError, TemporaryError
from tessera.kube import (
    KubeRejected,
    KubeUnavailable,
    NodeClient,
    NodeView,
    RetryPolicy,
)
from tessera.kube.events import EventBook
from tessera.kube.testing import MERGE, FakeApiServer, RecordedRequest

NODE = "gpu-1"
FAST = RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.05) as server:
        server.add_node(NODE, labels={"nvidia.com/mig.config": "all-disabled"},
                        annotations={"tessera.dev/note": "hello"})
        yield server


@pytest.fixture
def kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
    return api.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def node(kubeconfig: Path) -> AsyncIterator[NodeClient]:
    client = NodeClient.connect(NODE, kubeconfig=kubeconfig, retry=FAST)
    yield client
    await client.close()


class Watcher:
    """Consumes `NodeClient.watch()` in a task, as the agent does, so the watch keeps
    reading (bookmarks, expiries, reconnects) while the test looks elsewhere."""

    def __init__(self, client: NodeClient) -> None:
        self.views: asyncio.Queue[NodeView] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(client))

    async def _run(self, client: NodeClient) -> None:
        async for view in client.watch():
            await self.views.put(view)

    async def next(self, timeout: float = 30.0) -> NodeView:
        return await asyncio.wait_for(self.views.get(), timeout)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        assert self.task.cancelled()  # it never ended any other way


@pytest.fixture
async def watching(node: NodeClient) -> AsyncIterator[Watcher]:
    watcher = Watcher(node)
    yield watcher
    await watcher.stop()


def sent(api: FakeApiServer, method: str, path_end: str = "") -> list[RecordedRequest]:
    return [r for r in api.requests if r.method == method and r.path.endswith(path_end)]


def is_watch(r: RecordedRequest) -> bool:
    return r.query.get("watch") == "true"


def is_list(r: RecordedRequest) -> bool:
    return r.method == "GET" and r.path == "/api/v1/nodes" and not is_watch(r)


# -- reading -------------------------------------------------------------------------------


async def test_get_reads_the_node(api: FakeApiServer, node: NodeClient) -> None:
    view = await node.get()
    assert view == NodeView(NODE, {"nvidia.com/mig.config": "all-disabled"},
                            {"tessera.dev/note": "hello"},
                            api.node(NODE)["metadata"]["resourceVersion"])
    assert [(r.method, r.path, r.status) for r in api.requests] == [
        ("GET", f"/api/v1/nodes/{NODE}", 200)]
    assert node.requests == 1


async def test_pods_are_those_bound_to_this_node(api: FakeApiServer, node: NodeClient) -> None:
    api.add_pod("train", node=NODE, namespace="ml", labels={"app": "train"}, uid="u-1")
    api.add_pod("infer", node=NODE, phase="Pending")
    api.add_pod("elsewhere", node="gpu-2")
    pods = sorted(await node.pods(), key=lambda p: p.name)
    assert [(p.name, p.namespace, p.phase, p.node_name) for p in pods] == [
        ("infer", "default", "Pending", NODE), ("train", "ml", "Running", NODE)]
    assert pods[1].uid == "u-1"
    assert pods[1].labels == {"app": "train"}
    [request] = api.requests
    assert request.path == "/api/v1/pods"
    assert request.query["fieldSelector"] == f"spec.nodeName={NODE}"


# -- watching ------------------------------------------------------------------------------


async def test_watch_lists_then_follows_label_changes_in_order(
        api: FakeApiServer, watching: Watcher) -> None:
    first = await watching.next()
    assert first.labels == {"nvidia.com/mig.config": "all-disabled"}
    for config in ("all-1g.10gb", "all-balanced", "all-disabled"):
        api.set_labels(NODE, {"nvidia.com/mig.config": config})
    seen = [(await watching.next()).labels["nvidia.com/mig.config"] for _ in range(3)]
    assert seen == ["all-1g.10gb", "all-balanced", "all-disabled"]

    listing, watch = api.requests[:2]
    assert is_list(listing)
    assert listing.query["fieldSelector"] == f"metadata.name={NODE}"
    assert is_watch(watch)
    assert watch.query["fieldSelector"] == f"metadata.name={NODE}"
    assert watch.query["resourceVersion"] == first.resource_version
    assert watch.query["allowWatchBookmarks"] == "true"
    assert 300 <= int(watch.query["timeoutSeconds"]) <= 600


async def test_watch_yields_nothing_for_bookmarks_and_status_updates(
        api: FakeApiServer, watching: Watcher) -> None:
    await watching.next()
    for _ in range(3):
        api.heartbeat(NODE)
    await asyncio.sleep(0.2)  # several bookmarks go by
    api.set_annotations(NODE, {"tessera.dev/gpu.1": "disabled"})
    view = await watching.next()
    assert view.annotations["tessera.dev/gpu.1"] == "disabled"
    assert view.resource_version == api.node(NODE)["metadata"]["resourceVersion"]


async def test_bookmarks_move_the_point_a_watch_resumes_from(
        api: FakeApiServer, watching: Watcher) -> None:
    first = await watching.next()
    for _ in range(5):
        api.store.tick()  # the rest of the cluster changes; our node does not
    await asyncio.sleep(0.3)  # bookmarks carry the new resourceVersion to the client
    api.down()
    api.up()
    api.set_labels(NODE, {"x": "1"})
    await watching.next()
    resumed = [r for r in api.requests if is_watch(r)][-1]
    assert int(resumed.query["resourceVersion"]) > int(first.resource_version) + 4
    assert sum(is_list(r) for r in api.requests) == 1  # resumed, no re-list


async def test_watch_relists_after_expiry_without_repeating_itself(
        api: FakeApiServer, watching: Watcher) -> None:
    await watching.next()
    api.expire_watches()
    await until(lambda: sum(is_list(r) for r in api.requests) == 2)
    api.set_labels(NODE, {"after": "expiry"})
    view = await watching.next()  # the change, not the unchanged re-listed view
    assert view.labels["after"] == "expiry"


async def test_watch_survives_the_api_server_going_down(
        api: FakeApiServer, watching: Watcher,
        caplog: pytest.LogCaptureFixture) -> None:
    await watching.next()
    caplog.set_level(logging.DEBUG, logger="tessera.kube")
    api.down()
    await until(lambda: any("still failing" in r.getMessage() for r in caplog.records))
    assert watching.views.empty()  # reconnects fail meanwhile, with backoff
    assert not watching.task.done()
    api.set_labels(NODE, {"changed": "while-down"})
    api.up()
    view = await watching.next()
    assert view.labels["changed"] == "while-down"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot watch node gpu-1" in warnings[0].getMessage()
    assert any("again after" in r.getMessage() for r in caplog.records)


async def test_watch_waits_for_a_node_not_registered_yet(kubeconfig: Path,
                                                         api: FakeApiServer) -> None:
    client = NodeClient.connect("gpu-new", kubeconfig=kubeconfig, retry=FAST)
    watcher = Watcher(client)
    await until(lambda: client.requests >= 2)  # asked, and asked again after a 404
    assert watcher.views.empty()
    api.add_node("gpu-new", labels={"fresh": "yes"})
    assert (await watcher.next()).labels == {"fresh": "yes"}
    await watcher.stop()
    await client.close()


async def test_watch_outlives_its_node_being_deleted_and_registered_again(
        api: FakeApiServer, watching: Watcher, caplog: pytest.LogCaptureFixture) -> None:
    await watching.next()
    api.delete_node(NODE)
    await until(lambda: any("was deleted" in r.getMessage() for r in caplog.records))
    api.add_node(NODE, labels={"again": "yes"})
    assert (await watching.next()).labels == {"again": "yes"}


# -- patching ------------------------------------------------------------------------------


async def test_patch_sends_only_what_changed(api: FakeApiServer, node: NodeClient) -> None:
    await node.get()
    assert await node.patch(labels={"nvidia.com/mig.config": "all-disabled"}) is None
    assert await node.patch(annotations={"tessera.dev/note": "hello"}) is None
    assert sent(api, "PATCH") == []

    view = await node.patch(labels={"nvidia.com/mig.config": "all-disabled",
                                    "nvidia.com/mig.config.state": "pending"},
                            annotations={"tessera.dev/note": "hello"})
    assert view is not None
    assert view.labels["nvidia.com/mig.config.state"] == "pending"
    [patch] = sent(api, "PATCH")
    assert patch.content_type == MERGE
    assert patch.status == 200
    assert patch.body == {"metadata": {"labels": {"nvidia.com/mig.config.state": "pending"}}}
    assert api.node(NODE)["metadata"]["labels"]["nvidia.com/mig.config.state"] == "pending"
    assert await node.patch(labels={"nvidia.com/mig.config.state": "pending"}) is None
    assert len(sent(api, "PATCH")) == 1


async def test_patch_removes_keys_given_none(api: FakeApiServer, node: NodeClient) -> None:
    assert await node.patch(labels={"absent": None}) is None  # read first, then nothing
    view = await node.patch(labels={"nvidia.com/mig.config": None, "absent": None},
                            annotations={"tessera.dev/note": None})
    assert view is not None
    assert view.labels == {}
    assert view.annotations == {}
    [patch] = sent(api, "PATCH")
    assert patch.body == {"metadata": {"labels": {"nvidia.com/mig.config": None},
                                       "annotations": {"tessera.dev/note": None}}}
    assert api.node(NODE)["metadata"]["labels"] == {}


async def test_patch_compares_with_what_the_watch_saw(
        api: FakeApiServer, node: NodeClient, watching: Watcher) -> None:
    await watching.next()
    api.set_labels(NODE, {"nvidia.com/mig.config": "all-balanced"})
    await watching.next()
    assert await node.patch(labels={"nvidia.com/mig.config": "all-balanced"}) is None
    assert sent(api, "PATCH") == []
    assert sent(api, "GET", f"/nodes/{NODE}") == []


async def test_patch_retries_unavailable_and_throttled_honouring_retry_after(
        api: FakeApiServer, node: NodeClient) -> None:
    await node.get()
    api.fail_next(2, 503, method="PATCH")
    api.fail_next(1, 429, retry_after=0.5, method="PATCH")
    started = time.monotonic()
    view = await node.patch(labels={"a": "b"})
    assert time.monotonic() - started >= 0.5  # the policy alone would wait < 0.15 s
    assert view is not None
    assert view.labels["a"] == "b"
    assert [r.status for r in sent(api, "PATCH")] == [503, 503, 429, 200]


async def test_patch_retries_conflicts(api: FakeApiServer, node: NodeClient) -> None:
    await node.get()
    api.fail_next(2, 409, method="PATCH")
    assert await node.patch(labels={"a": "b"}) is not None
    assert [r.status for r in sent(api, "PATCH")] == [409, 409, 200]


async def test_patch_gives_up_with_kube_unavailable_while_down(
        api: FakeApiServer, node: NodeClient) -> None:
    await node.get()
    api.down()
    with pytest.raises(KubeUnavailable, match=r"gpu-1.*failed 4 times") as caught:
        await node.patch(labels={"a": "b"})
    assert isinstance(caught.value, TemporaryError)
    assert "since" in str(caught.value)
    assert caught.value.status is None
    assert node.requests == 1 + FAST.attempts
    api.up()
    assert await node.patch(labels={"a": "b"}) is not None


async def test_patch_gives_up_on_a_server_that_keeps_failing(
        api: FakeApiServer, node: NodeClient) -> None:
    await node.get()
    api.fail_next(10, 500, method="PATCH")
    with pytest.raises(KubeUnavailable, match="500") as caught:
        await node.patch(labels={"a": "b"})
    assert caught.value.status == 500
    assert len(sent(api, "PATCH")) == FAST.attempts


async def test_refusals_are_permanent_and_say_what_to_check(kubeconfig: Path) -> None:
    client = NodeClient.connect("no-such-node", kubeconfig=kubeconfig, retry=FAST)
    with pytest.raises(KubeRejected, match=r"no-such-node.*node name") as caught:
        await client.get()
    assert isinstance(caught.value, PermanentError)
    assert caught.value.status == 404
    assert client.requests == 1  # not retried
    await client.close()


async def test_slow_answers_are_waited_for_up_to_the_timeout(api: FakeApiServer,
                                                             kubeconfig: Path) -> None:
    api.delay(0.2)
    patient = NodeClient.connect(NODE, kubeconfig=kubeconfig, retry=FAST, timeout=20.0)
    assert (await patient.get()).name == NODE
    hasty = NodeClient.connect(NODE, kubeconfig=kubeconfig, timeout=0.05,
                               retry=RetryPolicy(attempts=2, first_delay=0.01, max_delay=0.01))
    with pytest.raises(KubeUnavailable, match="ReadTimeout"):
        await hasty.get()
    await patient.close()
    await hasty.close()


async def test_requests_counts_every_http_request(api: FakeApiServer,
                                                  node: NodeClient) -> None:
    api.fail_next(1, 503)
    await node.get()
    await node.patch(labels={"a": "b"})
    await node.patch(labels={"a": "b"})
    await node.event("Reason", "message")
    await node.pods()
    assert node.requests == len(api.requests) == 5


# -- events --------------------------------------------------------------------------------


async def test_events_are_created_about_the_node_and_repeats_counted(
        api: FakeApiServer, node: NodeClient) -> None:
    await node.get()  # learns the node's uid
    await node.event("MigConfigFailed", "GPU 0 busy", type="Warning")
    await node.event("MigConfigFailed", "GPU 0 busy", type="Warning")
    await node.event("MigConfigFailed", "GPU 0 busy", type="Warning")
    await node.event("MigConfigApplied", "all-balanced")
    events = {e["reason"]: e for e in api.events("default")}
    assert set(events) == {"MigConfigFailed", "MigConfigApplied"}
    failed = events["MigConfigFailed"]
    assert failed["count"] == 3
    assert failed["type"] == "Warning"
    assert failed["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE,
                                        "uid": api.node(NODE)["metadata"]["uid"]}
    assert failed["reportingComponent"] == "tessera"
    assert failed["source"] == {"component": "tessera", "host": NODE}
    assert events["MigConfigApplied"]["type"] == "Normal"
    assert [r.method for r in api.requests if "/events" in r.path] == [
        "POST", "PATCH", "PATCH", "POST"]


async def test_an_expired_event_is_created_anew(api: FakeApiServer, node: NodeClient) -> None:
    await node.event("GpuDrained", "GPU 3 drained")
    [first] = api.events()
    api.store.delete("events", "default", first["metadata"]["name"])  # its hour is up
    await node.event("GpuDrained", "GPU 3 drained")
    [second] = api.events()
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["count"] == 1


async def test_events_are_best_effort(api: FakeApiServer, node: NodeClient,
                                      caplog: pytest.LogCaptureFixture) -> None:
    api.down()
    await node.event("GpuDrained", "GPU 3 drained")  # does not raise
    assert any("not recorded" in r.getMessage() for r in caplog.records)


def test_event_book_folds_repeats_within_its_window() -> None:
    book = EventBook(window=10.0, size=2)
    key = ("Normal", "R", "m")
    assert book.repeat_of(key, now=0.0) is None
    book.created(key, "e1", now=0.0)
    seen = book.repeat_of(key, now=5.0)
    assert seen is not None
    assert (seen.name, seen.count) == ("e1", 1)
    book.counted(key, 2, now=5.0)
    assert book.repeat_of(key, now=14.0) is not None  # the window runs from the last one
    assert book.repeat_of(key, now=16.0) is None
    book.created(("Normal", "R", "n"), "e2", now=6.0)
    book.created(("Normal", "R", "o"), "e3", now=6.0)
    assert book.repeat_of(key, now=7.0) is None  # pushed out by newer kinds


# -- credentials ---------------------------------------------------------------------------


async def test_connect_reads_kubeconfig_from_the_environment(
        api: FakeApiServer, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    client = NodeClient.connect(NODE, retry=FAST)
    assert (await client.get()).name == NODE
    await client.close()


def test_connect_without_any_credentials_says_what_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    with pytest.raises(ConfigError, match=r"no Kubernetes credentials.*--kubeconfig"):
        NodeClient.connect(NODE, service_account=tmp_path / "serviceaccount")


@pytest.mark.parametrize("content", ["{not yaml: [", "{}", json.dumps(
    {"clusters": [], "contexts": [], "current-context": "nowhere"})])
def test_a_broken_kubeconfig_names_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(f"kubeconfig {path}")):
        NodeClient.connect(NODE, kubeconfig=path)


async def test_in_cluster_service_account(api: FakeApiServer, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(api.token or "")
    (account / "namespace").write_text("tessera")
    (account / "ca.crt").write_text("")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    # The service account speaks https; the fake speaks http, so only the loading is
    # checked here: the right server, and the token as the credential.
    from tessera.kube.config import load_config
    config = load_config(service_account=account)
    assert config.cluster.server == f"https://127.0.0.1:{api.port}"
    assert config.user is not None
    assert config.user.token == api.token


async def test_a_wrong_token_is_refused(api: FakeApiServer, tmp_path: Path) -> None:
    path = api.kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(api.token or "", "stolen"))
    client = NodeClient.connect(NODE, kubeconfig=path, retry=FAST)
    with pytest.raises(KubeRejected, match="401"):
        await client.get()
    await client.close()


# -- the fake server itself, through lightkube ---------------------------------------------


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[lightkube.AsyncClient]:
    raw = lightkube.AsyncClient(lightkube.KubeConfig.from_file(kubeconfig),
                                field_manager="test")
    yield raw
    await raw.close()


@pytest.mark.parametrize("patch_type", [PatchType.MERGE, PatchType.STRATEGIC,
                                        PatchType.APPLY])
async def test_fake_server_merges_metadata_for_every_patch_type(
        api: FakeApiServer, client: lightkube.AsyncClient, patch_type: PatchType) -> None:
    before = api.node(NODE)["metadata"]["resourceVersion"]
    patched = await client.patch(Node, NODE, {"metadata": {"labels": {"k": "v"}}},
                                 patch_type=patch_type, force=patch_type == PatchType.APPLY)
    assert patched.metadata is not None
    assert patched.metadata.labels == {
        "nvidia.com/mig.config": "all-disabled", "k": "v"}
    assert int(patched.metadata.resourceVersion or 0) > int(before)
    [request] = api.requests
    assert request.content_type == patch_type.value


async def test_fake_server_refuses_a_stale_resource_version(
        api: FakeApiServer, client: lightkube.AsyncClient) -> None:
    current = api.node(NODE)["metadata"]["resourceVersion"]
    api.set_labels(NODE, {"moved": "on"})
    with pytest.raises(lightkube.ApiError) as caught:
        await client.patch(Node, NODE, {"metadata": {"resourceVersion": current,
                                                     "labels": {"k": "v"}}},
                           patch_type=PatchType.MERGE)
    assert caught.value.status.code == 409
    assert caught.value.status.reason == "Conflict"
    fresh = api.node(NODE)["metadata"]["resourceVersion"]
    ok = await client.patch(Node, NODE, {"metadata": {"resourceVersion": fresh,
                                                      "labels": {"k": "v"}}})
    assert ok.metadata is not None
    assert ok.metadata.labels is not None
    assert ok.metadata.labels["k"] == "v"


async def test_fake_server_does_not_bump_versions_for_no_op_patches(
        api: FakeApiServer, client: lightkube.AsyncClient) -> None:
    before = api.node(NODE)["metadata"]["resourceVersion"]
    await client.patch(Node, NODE, {"metadata": {"labels": {"nvidia.com/mig.config":
                                                            "all-disabled"}}})
    assert api.node(NODE)["metadata"]["resourceVersion"] == before


async def test_fake_server_watch_ends_after_timeout_seconds(
        api: FakeApiServer, client: lightkube.AsyncClient) -> None:
    seen: list[str] = []

    async def watch() -> None:
        async for kind, _ in client.watch(Node, server_timeout=1):
            seen.append(kind)

    started = time.monotonic()
    task = asyncio.create_task(watch())
    # lightkube renews a watch the server ended cleanly: a second request marks the end.
    await until(lambda: sum(is_watch(r) for r in api.requests) == 2)
    assert time.monotonic() - started >= 1.0
    assert seen == ["ADDED"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_retry_policy_backs_off_exponentially_with_jitter() -> None:
    policy = RetryPolicy(attempts=5, first_delay=0.2, max_delay=1.0)
    for failures, step in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = [policy.delay(failures) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=1e6) == 60.0
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
