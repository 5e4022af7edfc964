"""A broken GPU is one broken GPU: the agent keeps working for the others.

A simulated node with one GPU off the bus (XID 79): the MIG manager applies the config to
the GPUs that answer and names the broken one in the reason; the plugin keeps serving the
healthy GPUs; `tessera status` marks the broken GPU with its error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent_support import agent_rig, agent_settings
from tessera.agent.keys import MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON

GPU = "nvidia.com/gpu"


async def test_the_mig_manager_leaves_a_gpu_off_the_bus_alone(tmp_path: Path) -> None:
    mixed = tmp_path / "plugin.yaml"
    mixed.write_text("version: v1\nflags: {migStrategy: mixed}\n")
    settings = agent_settings(tmp_path, plugin_config=mixed)
    async with agent_rig("a30x4", tmp_path / "s.json", settings=settings) as r:
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 4)
        r.control.raise_xid(2, 79)
        await r.kubelet.wait_for(lambda k: len(k.healthy(GPU)) == 3, what="GPU 2 unhealthy")
        await r.set_metadata(labels={MIG_CONFIG: "all-1g.6gb"})
        await r.pass_(2)
        labels, notes = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success", notes.get(MIG_REASON)
        assert "GPU 2 left alone" in notes[MIG_REASON]
        assert "fallen off the bus" in notes[MIG_REASON]
        assert [len(r.node.mig_state(i).gpu_instances) for i in (0, 1, 3)] == [4, 4, 4]
        assert ("Warning", "MigGpuUnreachable") in {(t, reason) for t, reason, _ in
                                                    getattr(r.api, "events", [])}
        await r.kubelet.wait_for(lambda k: len(k.healthy("nvidia.com/mig-1g.6gb")) == 12,
                                 what="the healthy GPUs' slices served")
        assert r.kubelet.healthy(GPU) == [], "the broken GPU is advertised, unhealthy"
        assert settings.status_file is not None
        done = subprocess.run(
            [sys.executable, "-c", "from tessera.cli.main import main; main()", "--simulate",
             "a30x4", "--sim-state", str(tmp_path / "s.json"), "status", "--status-file",
             str(settings.status_file)],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "broken GPU 2" in done.stdout
    assert "GPU 2: broken" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
