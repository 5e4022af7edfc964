"""`tessera dra` as operators run it: a process that registers with the stand-in kubelet,
publishes the node's slices to the fake API server, prepares a claim, and stops on SIGTERM;
bad flags are one line and exit 2."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from dra_support import Allocator, mig_node
from plugin_support import short_dir
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


@pytest.mark.parametrize(("flags", "message"), [
    (["--driver-name", "Not A Name"], "driver name 'Not A Name' is not a DNS subdomain"),
    (["--slice-layout", "diagonal"], "slice layout 'diagonal' is not one of split, combined"),
    (["--resync", "0"], "resync interval 0s is outside 1..86400s"),
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
