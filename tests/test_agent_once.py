"""`tessera agent --once` as a person first runs it (the README's first command), in its own
process on a simulated dgx-a100: what it says, what it logs, and its exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
FIRST_RUN = ("--simulate", "dgx-a100", "agent", "--no-kube", "--label",
             "nvidia.com/mig.config=all-balanced", "--once")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MIG_STRATEGY", "KUBECONFIG", "CONFIG_FILE", "TESSERA_SIMULATE")}
    return {**clean, "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "NODE_NAME": "node-a",
            "TESSERA_SIM_STATE": str(tmp_path / "sim.json")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TESSERA, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def advertised(stdout: str) -> dict[str, int]:
    """The table of what is advertised: resource name -> devices."""
    return {m[1]: int(m[2]) for m in re.finditer(r"(nvidia\.com/[\w.-]+)\s+│\s+(\d+)", stdout)}


def test_first_run_shows_the_slices_and_how_they_are_advertised(env: dict[str, str]) -> None:
    done = run(env, *FIRST_RUN)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "all-balanced: success" in out
    # GPU instances and compute instances counted apart: 4 of each on each of 8 GPUs.
    assert "created 32 GPU instances and 32 compute instances" in out
    assert "32 MIG devices on this node: 16x 1g.10gb, 8x 2g.20gb, 8x 3g.40gb" in out
    # NVIDIA's default strategy advertises the MIG-enabled GPUs whole: the output says so,
    # and how to advertise the slices instead.
    assert "MIG strategy none" in out
    assert advertised(out) == {"nvidia.com/gpu": 8}
    assert "MIG_STRATEGY=mixed" in out
    steps = out.split("try next:\n", 1)[1].splitlines()
    commands = [line.strip() for line in steps if line.strip() and not line.strip()
                .startswith("#")]
    assert 2 <= len(commands) <= 4
    assert all("tessera --simulate dgx-a100" in c for c in commands)

    # The log is for a person: no config dumped whole, no line per feature label.
    log = done.stderr.splitlines()
    assert not any("'flags'" in line or "deviceListStrategy" in line for line in log)
    assert not any("nvidia.com/cuda.driver" in line for line in log)
    assert len(log) <= 20, "\n".join(log)

    # The command it suggests first does what it says.
    mixed = run({**env, "MIG_STRATEGY": "mixed"}, "--simulate", "dgx-a100", "agent",
                "--no-kube", "--once")
    assert mixed.returncode == 0, mixed.stderr
    assert "MIG strategy mixed" in mixed.stdout
    assert advertised(mixed.stdout) == {"nvidia.com/mig-1g.10gb": 16,
                                        "nvidia.com/mig-2g.20gb": 8,
                                        "nvidia.com/mig-3g.40gb": 8}


def test_once_exits_1_when_the_mig_state_ends_failed(env: dict[str, str]) -> None:
    # The third NVML mutation fails: the apply stops part way, state failed (temporary).
    assert run(env, "--simulate", "dgx-a100", "sim", "fail", "--after", "3").returncode == 0
    done = run(env, *FIRST_RUN)
    assert done.returncode == 1, done.stdout
    reason = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(reason) == 1
    assert "MIG config 'all-balanced' failed" in reason[0]
    assert "NVML error" in reason[0]
    assert "retrying" not in reason[0]  # --once does not retry
    assert "all-balanced: failed" in done.stdout  # the status is still shown


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--label", "nvidia.com/mig.config=all-7g"), "no config named 'all-7g'"),
        (("--label", "nvidia.com/mig.config=all-balanced", "--mig-config", "{mig}"),
         "`mig-enabled`"),
        (("--plugin-config", "{plugin}"), "unknown version: 'v2'"),
    ],
    ids=["unknown-mig-config", "invalid-mig-config-file", "invalid-plugin-config"],
)
def test_once_exits_2_on_a_config_that_cannot_be_used(
        env: dict[str, str], tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    mig = tmp_path / "mig.yaml"
    mig.write_text("version: v1\nmig-configs:\n  all-balanced:\n"
                   "  - {devices: all, mig-enabled: maybe}\n")
    plugin = tmp_path / "plugin.yaml"
    plugin.write_text("version: v2\n")
    filled = [a.format(mig=mig, plugin=plugin) for a in args]
    done = run(env, "--simulate", "dgx-a100", "agent", "--no-kube", *filled, "--once")
    assert done.returncode == 2, (done.stdout, done.stderr)
    reason = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(reason) == 1, done.stderr
    assert said in reason[0]
    assert "Traceback" not in done.stderr
