"""`tessera dra` as operators run it: a process that registers with the stand-in kubelet,
publishes the node's slices to the fake API server, prepares a claim, and stops on SIGTERM;
bad flags are one line and exit 2."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dra_support import Allocator, mig_node
from helpers import make_node
from plugin_support import apply_devices, short_dir
from tessera.kube.testing import FakeApiServer
from tessera.kubeletapi.testing_dra import ClaimRef, TestDraKubelet

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
DRIVER = "gpu.nvidia.com"


async def _run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *TESSERA, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_dra_command_serves_a_claim_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    node, _ = mig_node("a30x4", state)
    node.close()
    with FakeApiServer() as api, short_dir() as kubelet_dir:
        api.add_device_class("mig.nvidia.com", [
            f"device.attributes['{DRIVER}'].type == 'mig'"])
        async with TestDraKubelet(kubelet_dir) as kubelet:
            process = await _run(
                "--simulate", "a30x4", "--sim-state", str(state), "dra",
                "--node-name", "node-a", "--kubeconfig", str(api.kubeconfig(tmp_path / "kc")),
                "--kubelet-dir", str(kubelet_dir), "--cdi-dir", str(tmp_path / "cdi"))
            try:
                await kubelet.wait_registered(DRIVER, timeout=30)
                assert api.slices(node="node-a")
                api.add_claim("c", {"devices": {"requests": [{"name": "mig", "exactly": {
                    "deviceClassName": "mig.nvidia.com"}}]}})
                Allocator(api).allocate("c")
                uid = api.claim("c")["metadata"]["uid"]
                answer = (await kubelet.prepare(DRIVER, [ClaimRef("default", uid, "c")]))[uid]
                assert answer.error == ""
                assert answer.devices[0].cdi_device_ids[0].startswith(
                    f"k8s.gpu.nvidia.com/claim={uid}-gpu-0-mig-1g6gb-")
            finally:
                process.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(process.communicate(), 20)
            log = err.decode()
            assert process.returncode == 0, log
            assert "registered with the kubelet as gpu.nvidia.com" in log
            assert not list(kubelet_dir.rglob("*.sock")), "sockets removed on exit"
            assert (kubelet_dir / "plugins" / DRIVER / "checkpoint.json").exists()


async def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_dra_command_alone_taints_exactly_what_an_xid_hits_and_lifts_it(
        tmp_path: Path) -> None:
    """`tessera dra` without the agent: its own XID watcher and the device plugin's health
    book; a device healthy again after --recover-after and a good probe."""
    state = tmp_path / "sim.json"
    node, _ = mig_node("a30x4", state)
    node.set_mig_mode(3, False)
    node.reset(3)
    apply_devices(node, {"2g.12gb": 1}, gpus="[1]")
    node.close()
    _, control = make_node("a30x4", state)
    with FakeApiServer() as api, short_dir() as kubelet_dir:
        async with TestDraKubelet(kubelet_dir) as kubelet:
            process = await _run(
                "--simulate", "a30x4", "--sim-state", str(state), "dra",
                "--node-name", "node-a", "--kubeconfig", str(api.kubeconfig(tmp_path / "kc")),
                "--kubelet-dir", str(kubelet_dir), "--cdi-dir", str(tmp_path / "cdi"),
                "--recover-after", "1s")
            try:
                registration = await kubelet.wait_registered(DRIVER, timeout=30)

                def tainted() -> dict[str, list[dict[str, str]]]:
                    return {d["name"]: d["taints"] for s in api.slices(node="node-a")
                            for d in s["spec"].get("devices", []) if d.get("taints")}

                def unhealthy() -> set[str]:
                    return {d for (_, d), h in registration.health.items() if h != "HEALTHY"}

                await kubelet.wait_for(lambda k: len(registration.health) > 1,
                                       what="a health report")
                control.raise_xid(2, 13)  # an application's XID: not the device's fault
                control.raise_xid(3, 48)
                await _until(lambda: set(tainted()) == {"gpu-3"}, "gpu-3 tainted alone")
                (taint,) = tainted()["gpu-3"]
                assert (taint["key"], taint["value"]) == (f"{DRIVER}/xid", "48")
                await kubelet.wait_for(lambda k: unhealthy() == {"gpu-3"}, what="gpu-3 sick")
                assert registration.health_messages[("node-a", "gpu-3")] == "XID 48 on GPU 3"
                await _until(lambda: not tainted(), "gpu-3's taint lifted after 1 s quiet")
                await kubelet.wait_for(lambda k: not unhealthy(), what="gpu-3 healthy")

                # An XID on a MIG device hits that device alone, not the rest of its GPU.
                instance = next(d for s in api.slices(node="node-a")
                                for d in s["spec"].get("devices", [])
                                if "uuid" in d["attributes"]
                                and d["attributes"]["type"]["string"] == "mig")
                control.raise_xid(1, 94, device=instance["attributes"]["uuid"]["string"])
                await _until(lambda: set(tainted()) == {instance["name"]},
                             "the MIG device tainted alone")
            finally:
                process.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(process.communicate(), 20)
    log = err.decode()
    assert process.returncode == 0, log
    assert "XID 13 on GPU 2 ignored" in log
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize(("flags", "message"), [
    (["--driver-name", "Not A Name"], "driver name 'Not A Name' is not a DNS subdomain"),
    (["--slice-layout", "diagonal"],
     "slice layout 'diagonal' is not one of auto, split, combined"),
    (["--resync", "0"], "resync interval 0s is outside 1..86400s"),
    (["--recover-after", "soon"], "--recover-after 'soon' is not a duration"),
    (["--recover-after", "0s"], "--recover-after '0s' must be longer than 0"),
    (["--recover-after", "30d"], "--recover-after '30d' is not a duration"),
    (["--recover-after", "48h"], "--recover-after '48h' is over 86400s"),
    (["--binding-conditions", "--no-prepare-ahead"], "binding conditions need prepare-ahead"),
])
async def test_dra_command_refuses_bad_flags_with_one_line_and_exit_2(
    tmp_path: Path, flags: list[str], message: str,
) -> None:
    process = await _run("--simulate", "a30x4", "--sim-state", str(tmp_path / "s.json"), "dra",
                         "--node-name", "node-a", "--kubelet-dir", str(tmp_path), *flags)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


async def test_dra_command_on_a_cluster_before_1_34_is_one_line_and_exit_2(
        tmp_path: Path) -> None:
    with FakeApiServer(version="v1.33.2", resource_v1=False) as api, short_dir() as kubelet:
        process = await _run(
            "--simulate", "a30x4", "--sim-state", str(tmp_path / "s.json"), "dra",
            "--node-name", "node-a", "--kubeconfig", str(api.kubeconfig(tmp_path / "kc")),
            "--kubelet-dir", str(kubelet), "--cdi-dir", str(tmp_path / "cdi"))
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = [line for line in err.decode().strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1, lines
    assert "needs resource.k8s.io/v1, Kubernetes 1.34 or later" in lines[0]
    assert "Traceback" not in err.decode()
