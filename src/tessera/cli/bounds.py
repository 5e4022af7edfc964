"""Flag values checked before any work starts: one parser per kind of value, reused by every
command (`typer.Option(..., parser=Seconds(at_most=3600))`).

A value out of bounds is a usage error: one line naming the flag, the value and the range,
exit 2. The maxima are what a sane deployment needs, documented in the README's "Bad
input" section; they keep a typo (`--interval 1e308`, `--port 80800`) from reaching a
thread, a socket or a sleep that would misbehave on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from tessera.errors import ConfigError

MAX_PORT = 65535
MAX_INTERVAL_S = 3600.0
"""Longest sampling or refresh period: beyond an hour the data is stale for any dashboard."""
MIN_INTERVAL_S = 0.01
"""Shortest period: faster than this spins a core on sampling, not on serving."""


def _number(value: object, kind: Callable[[str], float | int], what: str) -> float | int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    try:
        return kind(str(value).strip())
    except (ValueError, OverflowError) as e:
        raise typer.BadParameter(f"{value!r} is not {what}") from e


def port(value: object) -> int:
    """A TCP port, 0-65535 (0: any free port)."""
    number = int(_number(value, int, "a port number (0-65535)"))
    if not 0 <= number <= MAX_PORT:
        raise typer.BadParameter(f"{number} is not a port: give 0-{MAX_PORT} (0 picks a free "
                                 "one)")
    return number


@dataclass(frozen=True)
class Seconds:
    """A period or timeout in seconds: finite, at least `at_least`, at most `at_most`."""

    at_most: float = MAX_INTERVAL_S
    at_least: float = MIN_INTERVAL_S

    def __call__(self, value: object) -> float:
        number = float(_number(value, float, "a number of seconds"))
        if not math.isfinite(number) or not self.at_least <= number <= self.at_most:
            raise typer.BadParameter(
                f"{value} is not a period Tessera can use: give {self.at_least:g} to "
                f"{self.at_most:g} seconds")
        return number

    @property
    def __name__(self) -> str:  # typer names a parser's type after it
        return "seconds"


@dataclass(frozen=True)
class Count:
    """A whole number from `at_least` to `at_most`."""

    at_most: int
    at_least: int = 0
    what: str = "count"

    def __call__(self, value: object) -> int:
        number = _number(value, int, f"a whole number ({self.what})")
        if isinstance(number, float) and not number.is_integer():
            raise typer.BadParameter(f"{value} is not a whole number ({self.what})")
        if not self.at_least <= number <= self.at_most:
            raise typer.BadParameter(f"{value} is out of range for a {self.what}: give "
                                     f"{self.at_least} to {self.at_most}")
        return int(number)

    @property
    def __name__(self) -> str:
        return self.what


def node_name(value: object) -> str:
    """A node's name as Kubernetes spells it: lowercased, as the kubelet lowercases the
    hostname, then a DNS subdomain (it also names local files: no `/`, no `..`)."""
    from tessera.labels.values import is_dns_subdomain

    name = str(value).strip().lower()
    if not is_dns_subdomain(name):
        raise typer.BadParameter(
            f"{str(value)[:80]!r} is not a node name: lowercase letters, digits, '-' and '.', "
            "at most 253 characters (kubectl get nodes lists them)")
    return name


def dir_problem(path: Path) -> str | None:
    """Why Tessera could not write in directory `path` (making it if need be), or None."""
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            return f"{existing} is a broken symbolic link"
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return "is a file; give a directory" if existing == path else (
            f"{existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"{existing} is not writable (read-only or permission denied); give a "
                "directory Tessera may write in")
    return None


def file_problem(path: Path) -> str | None:
    """Why Tessera could not (re)write file `path`, or None."""
    if path.is_dir():
        return "is a directory; give a file path"
    problem = dir_problem(path.parent)
    return None if problem is None else f"its directory {path.parent}: {problem}"


def writable_dir(value: object) -> Path:
    """A directory flag Tessera will write in (sockets, state)."""
    path = Path(str(value))
    problem = dir_problem(path)
    if problem is not None:
        raise typer.BadParameter(f"{path}: {problem}")
    return path


def writable_file(value: object) -> Path:
    """A file flag Tessera will (re)write: not a directory, in a directory it may write in."""
    path = Path(str(value))
    problem = file_problem(path)
    if problem is not None:
        raise typer.BadParameter(f"{path}: {problem}")
    return path


def check_writable(path: Path, what: str, *, directory: bool = False) -> None:
    """Refuse, before any work, a default location Tessera could not write (a flag given
    by hand is checked by its parser): `ConfigError` naming `what` and the fix."""
    problem = dir_problem(path) if directory else file_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {path}: {problem} (set XDG_STATE_HOME or "
                          "XDG_RUNTIME_DIR, or give the path with its flag)")
