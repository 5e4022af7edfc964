"""The CLI's error boundary and flag bounds, as values: which exit code, which line."""

from __future__ import annotations

import errno
import math
import os
import socket
from pathlib import Path

import pytest
import typer

from tessera.cli.boundary import EXIT_BAD_INPUT, EXIT_FAILED, describe, exit_code
from tessera.cli.bounds import Count, Seconds, check_writable, port, writable_dir, writable_file
from tessera.errors import ConfigError, HardwareError, MigConfigError


@pytest.mark.parametrize(("error", "code", "words"), [
    (MigConfigError("bad", source="c.yaml", config="x"), EXIT_BAD_INPUT, "c.yaml, config 'x'"),
    (HardwareError("NVML error 999"), EXIT_FAILED, "NVML error 999"),
    (FileNotFoundError(errno.ENOENT, "No such file", "/no/such"), EXIT_BAD_INPUT,
     "/no/such: does not exist"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), EXIT_BAD_INPUT,
     "/root/x: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/f"), EXIT_BAD_INPUT,
     "/ro/f: read-only file system"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/s"), EXIT_BAD_INPUT, "107 bytes"),
    (OSError(errno.EADDRINUSE, "Address already in use"), EXIT_FAILED, "pick another port"),
    (OSError(errno.EIO, "Input/output error"), EXIT_FAILED, "Input/output error"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), EXIT_BAD_INPUT,
     "cannot resolve the address"),
    (KeyError("gpu"), EXIT_FAILED, "unexpected KeyError: 'gpu' (a bug in Tessera: rerun with "
                                   "--debug"),
])
def test_every_failure_is_one_line_with_the_exit_code_of_its_kind(
        error: BaseException, code: int, words: str) -> None:
    assert exit_code(error) == code
    line = describe(error)
    assert words in line
    assert "\n" not in line


def test_a_multi_line_message_is_flattened() -> None:
    assert describe(ConfigError("first\n  second\tthird")) == "first second third"


def test_ports() -> None:
    assert port("0") == 0
    assert port(" 65535 ") == 65535
    assert port(9400) == 9400
    for bad in ("65536", "-1", "80.5", "http", "1e3", ""):
        with pytest.raises(typer.BadParameter):
            port(bad)


def test_periods_are_finite_and_bounded() -> None:
    period = Seconds(at_most=60)
    assert period("0.5") == 0.5
    assert period(15.0) == 15.0
    for bad in ("0", "-1", "nan", "inf", "-inf", "1e308", "61", "soon"):
        with pytest.raises(typer.BadParameter, match=r"0\.01 to 60 seconds|not a number"):
            period(bad)
    assert math.isfinite(Seconds()("3600"))


def test_counts_are_whole_and_bounded() -> None:
    gpus = Count(1023, what="GPU index")
    assert gpus("7") == 7
    for bad in ("-1", "1024", "1.5", "99999999999999999999999", "x"):
        with pytest.raises(typer.BadParameter):
            gpus(bad)


def test_writable_places(tmp_path: Path) -> None:
    assert writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "f").write_text("")
    with pytest.raises(typer.BadParameter, match="is a file; give a directory"):
        writable_dir(tmp_path / "f")
    with pytest.raises(typer.BadParameter, match="is a file, not a directory"):
        writable_dir(tmp_path / "f" / "below")
    with pytest.raises(typer.BadParameter, match="is a directory; give a file path"):
        writable_file(tmp_path)
    with pytest.raises(ConfigError, match=r"status file .*below/s.json: its directory"):
        check_writable(tmp_path / "f" / "below" / "s.json", "status file")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(typer.BadParameter, match="broken symbolic link"):
        writable_dir(tmp_path / "dangling" / "x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(typer.BadParameter, match="not writable"):
        writable_dir(locked / "sockets")
