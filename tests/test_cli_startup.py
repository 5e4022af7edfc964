"""The CLI loads only what a command needs: the import graph of real processes.

CPU time is the benchmark's business (`bench/cli_startup.py`); this asserts which modules
a process imports, which does not vary with load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESSERA = [sys.executable, "-X", "importtime", "-c",
           "from tessera.cli.main import main; main()"]
CLUSTER_AND_SERVERS = ("lightkube", "httpx", "httpcore", "grpc", "google.protobuf",
                       "prometheus_client", "tessera.kube", "tessera.kubeletapi",
                       "tessera.metrics", "tessera.plugin", "tessera.agent")


def imported(tmp_path: Path, *args: str) -> set[str]:
    env = {**os.environ, "TESSERA_SIM_STATE": str(tmp_path / "sim.json")}
    done = subprocess.run([*TESSERA, *args], env=env, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    assert "tessera.cli.main" in modules  # the parse read real -X importtime output
    return modules


def loaded(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))


def test_version_imports_nothing_but_the_root_command(tmp_path: Path) -> None:
    modules = imported(tmp_path, "--version")
    assert {m for m in modules if m.startswith("tessera")} <= {
        "tessera", "tessera.cli", "tessera.cli.main", "tessera.cli.boundary",
        "tessera.cli.context", "tessera.errors"}
    assert loaded(modules, ("yaml", "pydantic", "pynvml", *CLUSTER_AND_SERVERS)) == []


@pytest.mark.parametrize("command", [("mig", "show"), ("mig", "profiles"), ("mig", "export"),
                                     ("mig", "apply", "-c", "all-balanced", "--dry-run")])
def test_mig_commands_import_nothing_of_kubernetes_grpc_or_the_exporter(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    modules = imported(tmp_path, "--simulate", "dgx-a100", *command)
    assert "tessera.mig.engine" in modules
    assert loaded(modules, CLUSTER_AND_SERVERS) == []
