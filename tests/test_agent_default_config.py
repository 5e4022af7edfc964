"""A default MIG config for nodes without `nvidia.com/mig.config` (the Helm chart's
`mig.defaultConfig`, the agent's `--default-mig-config`): the label wins, and removing it
sends the node back to the default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent_support import agent_rig
from tessera.agent.keys import MIG_CONFIG, MIG_CONFIG_STATE, MIG_REASON


def mig_on(node: object) -> list[bool]:
    return [node.mig_mode(g).current  # type: ignore[attr-defined]
            for g in range(node.gpu_count())]  # type: ignore[attr-defined]


async def test_a_node_without_the_label_follows_the_default(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json", default_config="all-balanced") as r:
        await r.pass_()
        labels, annotations = await r.metadata()
        assert MIG_CONFIG not in labels, "the default is applied, not written as the label"
        assert labels[MIG_CONFIG_STATE] == "success"
        assert MIG_REASON not in annotations
        assert mig_on(r.node) == [True] * 4
        assert len(r.node.mig_devices(0)) == 3  # A30 all-balanced: 2×1g.6gb + 1×2g.12gb
        status = json.loads((r.directory / "status.json").read_text())
        assert status["mig"]["state"] == "success"


async def test_the_label_wins_and_removing_it_returns_to_the_default(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json", default_config="all-balanced") as r:
        await r.set_metadata(labels={MIG_CONFIG: "all-disabled"})
        await r.pass_()
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert mig_on(r.node) == [False] * 4

        await r.set_metadata(labels={MIG_CONFIG: None})
        await r.pass_()
        labels, _ = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "success"
        assert mig_on(r.node) == [True] * 4


async def test_without_a_default_an_unlabelled_node_is_left_alone(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json") as r:
        await r.pass_(2)
        labels, _ = await r.metadata()
        assert MIG_CONFIG_STATE not in labels
        assert mig_on(r.node) == [False] * 4


async def test_an_unknown_default_fails_with_the_reason(tmp_path: Path) -> None:
    async with agent_rig("a30x4", tmp_path / "s.json", default_config="all-3g.40gb") as r:
        await r.pass_()
        labels, annotations = await r.metadata()
        assert labels[MIG_CONFIG_STATE] == "failed"
        assert "all-3g.40gb" in annotations[MIG_REASON]


def test_the_cli_takes_the_default_from_its_flag_or_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "NODE_NAME": "node-a",
           "TESSERA_SIMULATE": "a30x4", "TESSERA_SIM_STATE": str(tmp_path / "sim.json"),
           "TESSERA_DEFAULT_MIG_CONFIG": "all-1g.6gb"}
    tessera = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
    done = subprocess.run([*tessera, "agent", "--no-kube", "--once"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "MIG all-1g.6gb: success" in done.stdout  # the default it follows, by name
    assert done.stdout.count("MIG on") == 4
    assert done.stdout.count("1g.6gb GI") == 16

    flag = subprocess.run([*tessera, "agent", "--no-kube", "--once",
                           "--default-mig-config", "all-disabled"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert flag.returncode == 0, flag.stderr
    assert flag.stdout.count("MIG off") == 4, "the flag wins over the environment"
