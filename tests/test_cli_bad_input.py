"""Bad input to `tessera`, run as a user runs it (a process): exit 2, one line on stderr,
never a traceback; `--debug` shows the traceback as well. Files that cannot be read,
directories where files belong, state that cannot be written, bad ports and periods,
GPUs that are not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
ROOT = os.geteuid() == 0


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TESSERA_SIM_STATE": str(tmp_path / "sim.json"),
                   "XDG_STATE_HOME": str(tmp_path / "state"),
                   "XDG_RUNTIME_DIR": str(tmp_path / "run"), **env}
    environment.pop("TESSERA_DEBUG", None)
    environment.update(env)
    return subprocess.run([*TESSERA, "--simulate", "a30x4", *args], env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line a refusal prints, checked: exit 2, no traceback, the words named."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert all(not line.startswith((" ", "File ")) for line in lines), lines
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {"binary": tmp_path / "binary.yaml", "latin1": tmp_path / "latin1.yaml",
            "dir": tmp_path / "a-directory", "file": tmp_path / "a-file"}
    made["binary"].write_bytes(bytes(range(256)) * 4)
    made["latin1"].write_bytes("version: v1\n# réglage\n".encode("latin-1"))
    made["dir"].mkdir()
    made["file"].write_text("x\n")
    return made


def test_binary_and_latin1_configs_name_the_file_and_the_byte(
        tmp_path: Path, files: dict[str, Path]) -> None:
    refused(run(tmp_path, "mig", "apply", "-f", str(files["binary"]), "-c", "x"),
            str(files["binary"]), "not UTF-8 text (line 2, byte 128")
    refused(run(tmp_path, "mig", "layout", "--apply", str(files["latin1"])),
            str(files["latin1"]), "not UTF-8")
    refused(run(tmp_path, "plugin", "--config", str(files["latin1"]), "--socket-dir",
                str(tmp_path / "sockets"), "--kubelet-socket", ""),
            str(files["latin1"]), "save the file as UTF-8")
    refused(run(tmp_path, "exporter", "--port", "0", "--counters", str(files["binary"])),
            str(files["binary"]), "not UTF-8")


def test_binary_standard_input_is_refused_as_a_file_is(tmp_path: Path) -> None:
    done = subprocess.run([*TESSERA, "--simulate", "a30x4", "mig", "apply", "-f", "-", "-c",
                           "x"], input=bytes(range(128, 256)), capture_output=True,
                          timeout=120, check=False,
                          env={**os.environ, "TESSERA_SIM_STATE": str(tmp_path / "s.json")})
    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "error: <stdin>: not UTF-8 text (line 1, byte 0 is 0x80); save the file as UTF-8")


def test_a_directory_where_a_file_belongs(tmp_path: Path, files: dict[str, Path]) -> None:
    folder = str(files["dir"])
    refused(run(tmp_path, "mig", "apply", "-f", folder, "-c", "x"), folder, "is a directory")
    refused(run(tmp_path, "mig", "layout", "--apply", folder), folder, "is a directory")
    refused(run(tmp_path, "exporter", "--port", "0", "--counters", folder), folder,
            "is a directory")
    refused(run(tmp_path, "agent", "--once", "--status-file", folder), folder,
            "is a directory")
    refused(run(tmp_path, "status", "--status-file", folder), folder, "is a directory")


def test_a_file_where_a_directory_belongs(tmp_path: Path, files: dict[str, Path]) -> None:
    blocker = str(files["file"])
    refused(run(tmp_path, "agent", "--once", "--socket-dir", blocker), blocker, "is a file")
    refused(run(tmp_path, "plugin", "--socket-dir", blocker, "--kubelet-socket", ""),
            blocker, "is a file")
    # The state directory itself is a file: refused before anything is written.
    refused(run(tmp_path, "agent", "--once", XDG_STATE_HOME=blocker), blocker,
            "is a file, not a directory")
    refused(run(tmp_path, "gpu", "disable", "1", "--reason", "ECC", XDG_STATE_HOME=blocker),
            blocker, "cannot write")
    assert files["file"].read_text() == "x\n"


@pytest.mark.skipif(ROOT, reason="root may read and write anything; permissions need a user")
def test_unreadable_files_and_read_only_directories(tmp_path: Path,
                                                    files: dict[str, Path]) -> None:
    locked = tmp_path / "locked.yaml"
    locked.write_text("version: v1\n")
    locked.chmod(0)
    refused(run(tmp_path, "mig", "apply", "-f", str(locked), "-c", "x"), str(locked),
            "permission denied")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    refused(run(tmp_path, "agent", "--once", XDG_STATE_HOME=str(read_only)), str(read_only),
            "not writable")
    refused(run(tmp_path, "agent", "--once", "--socket-dir", str(read_only / "sockets")),
            str(read_only), "not writable")


@pytest.mark.parametrize(("args", "words"), [
    (("agent", "--once", "--metrics-port", "70000"), ("--metrics-port", "0-65535")),
    (("agent", "--once", "--metrics-port", "-1"), ("--metrics-port", "0-65535")),
    (("exporter", "--port", "99999"), ("--port", "0-65535")),
    (("exporter", "--port", "http"), ("--port", "not a port number")),
    (("exporter", "--interval", "1e308"), ("--interval", "0.01 to 3600 seconds")),
    (("agent", "--once", "--metrics-interval", "nan"), ("--metrics-interval",)),
    (("plugin", "--refresh", "-2"), ("--refresh",)),
    (("sim", "xid", "0", "99999999999999999999"), ("XID",)),
    (("sim", "process", "start", "0", "--memory", "-5"), ("--memory",)),
])
def test_numbers_out_of_bounds_are_refused_before_work(tmp_path: Path, args: tuple[str, ...],
                                                       words: tuple[str, ...]) -> None:
    line = refused(run(tmp_path, *args), *words)
    assert "--help" in line  # says where the flags are explained


def test_gpu_disable_names_the_gpus_there_are(tmp_path: Path) -> None:
    line = refused(run(tmp_path, "gpu", "disable", "99", "--reason", "ECC"), "'99'",
                   "is not on node")
    assert line.count("GPU-") == 4  # the a30x4's four GPUs, by index and UUID
    refused(run(tmp_path, "gpu", "disable", "GPU-nope", "--reason", "ECC"), "'GPU-nope'")
    refused(run(tmp_path, "gpu", "disable", "1", "--reason", "two\nlines"), "--reason")
    assert not (tmp_path / "state" / "tessera").exists() or not any(
        (tmp_path / "state" / "tessera").glob("node-*.json"))
    done = run(tmp_path, "gpu", "disable", "1", "--reason", "ECC")
    assert done.returncode == 0, done.stderr


def test_node_names_are_kubernetes_names(tmp_path: Path) -> None:
    for bad in ("../../etc/cron.d/x", "a b"):
        refused(run(tmp_path, "gpu", "disable", "1", "--reason", "x", "--node-name", bad),
                "--node-name", "not a node name")
    refused(run(tmp_path, "agent", "--once", "--node-name", "x/y"), "not a node name")
    assert not (tmp_path / "etc").exists()
    done = run(tmp_path, "gpu", "disable", "1", "--reason", "x", "--node-name", "GPU-Node-7")
    assert done.returncode == 0, done.stderr  # lowercased, as the kubelet names nodes
    assert (tmp_path / "state" / "tessera" / "node-gpu-node-7-sim-a30x4.json").exists()


def test_label_flags_are_checked_as_kubernetes_does(tmp_path: Path) -> None:
    refused(run(tmp_path, "agent", "--once", "--label", "nvidia.com/mig.config=all balanced"),
            "--label", "not a label value")
    refused(run(tmp_path, "agent", "--once", "--label", "Bad_Prefix.com/x=1"), "--label",
            "DNS subdomain")


def test_corrupt_state_files_are_named(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text('{"mig": ')
    refused(run(tmp_path, "status", "--status-file", str(status)), str(status),
            "not valid JSON at line 1")
    for wrong in ('{"time": "yesterday"}', '{"time": 1, "mig": 5}', "[1]"):
        status.write_text(wrong)
        refused(run(tmp_path, "status", "--status-file", str(status)), str(status),
                "not an agent status file")
    node_file = tmp_path / "state" / "tessera" / "node-n-sim-a30x4.json"
    node_file.parent.mkdir(parents=True)
    node_file.write_bytes(b"\xff\xfe{}")
    refused(run(tmp_path, "gpu", "disable", "1", "--reason", "x", "--node-name", "n"),
            str(node_file), "delete it")


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    refused(run(tmp_path, "mig", "nope"), "No such command 'nope'")
    refused(run(tmp_path, "mig", "apply", "--no-such-flag"), "--no-such-flag")


def test_debug_shows_the_traceback_as_well(tmp_path: Path, files: dict[str, Path]) -> None:
    args = ("mig", "apply", "-f", str(files["binary"]), "-c", "x")
    quiet = run(tmp_path, *args)
    loud = subprocess.run([*TESSERA, "--debug", "--simulate", "a30x4", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TESSERA_SIM_STATE": str(tmp_path / "s.json")})
    by_env = run(tmp_path, *args, TESSERA_DEBUG="1")
    for done in (loud, by_env):
        assert done.returncode == quiet.returncode == 2
        assert "Traceback (most recent call last)" in done.stderr
        assert done.stderr.rstrip().splitlines()[-1] == quiet.stderr.strip()
