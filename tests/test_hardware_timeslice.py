"""The time-slice operation of the GPU seam: on a node it is `nvidia-smi compute-policy -i
<uuid> --set-timeslice <0..3>` (found on PATH or under the mounted driver root), failing with
one line naming the GPU; the simulator records it, refuses bad values and lost GPUs, and a
reboot puts it back to Default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_node
from tessera.errors import HardwareError
from tessera.hardware import backend


def _fake_nvidia_smi(directory: Path, body: str) -> Path:
    tool = directory / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    return tool


def test_a_node_sets_the_interval_through_nvidia_smi(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls"
    _fake_nvidia_smi(tmp_path, f'echo "$@" >> {calls}')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    backend._nvidia_smi_time_slice(2, "GPU-abc", 3)
    assert calls.read_text().split() == ["compute-policy", "-i", "GPU-abc", "--set-timeslice",
                                         "3"]


def test_a_failing_nvidia_smi_is_one_line_naming_the_gpu(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, 'echo "Setting compute policy..." ; '
                               'echo "Insufficient Permissions" >&2; exit 4')
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HardwareError) as raised:
        backend._nvidia_smi_time_slice(1, "GPU-abc", 2)
    assert str(raised.value) == ("nvidia-smi could not set the time-slice interval to 2 on "
                                 "GPU 1: Insufficient Permissions")
    assert raised.value.gpu == 1


def test_no_nvidia_smi_says_where_it_was_looked_for(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(backend, "DRIVER_ROOTS", (tmp_path / "driver-root",))
    with pytest.raises(HardwareError, match=r"nvidia-smi is not on PATH nor under .*driver-root"):
        backend._nvidia_smi_time_slice(0, "GPU-abc", 1)
    # Under a mounted driver root it is found without PATH.
    root = tmp_path / "driver-root" / "usr" / "bin"
    root.mkdir(parents=True)
    _fake_nvidia_smi(root, "exit 0")
    backend._nvidia_smi_time_slice(0, "GPU-abc", 1)


def test_the_simulator_records_the_interval(tmp_path: Path) -> None:
    node, control = make_node("a30x4", tmp_path / "sim.json")
    node.set_time_slice(1, 2)
    assert control.time_slices() == {0: 0, 1: 2, 2: 0, 3: 0}
    with pytest.raises(HardwareError, match="GPU 1: setting the time-slice interval failed"):
        node.set_time_slice(1, 7)
    control.raise_xid(3, 79)
    with pytest.raises(HardwareError, match="GPU 3"):
        node.set_time_slice(3, 1)
    control.reboot()
    assert control.time_slices()[1] == 0
