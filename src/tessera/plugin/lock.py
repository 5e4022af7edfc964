"""One instance per node: a lock file that a second agent or plugin finds held, naming the first.

Two device plugins serving the same socket directory would take turns deleting each other's
sockets and registrations; two agents on the same state would take turns rewriting MIG
layouts. So each instance takes an exclusive `flock` on a lock file before it serves, and
writes its PID there. `flock` belongs to the open file, so a holder that dies (even by
SIGKILL) releases it at once: a stale file never blocks a restart, and nothing has to be
cleaned up. The file itself is never removed (removing it would let a third instance lock
a fresh file while the second still holds the old one).

The kubelet deletes the files of its device-plugins directory when it restarts; `refresh()`
takes the lock again on a recreated file, so a later instance still finds it held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

from tessera.errors import ConfigError, TemporaryError

LOCK_NAME = ".tessera.lock"


class AlreadyRunning(TemporaryError):  # noqa: N818 - says what it is, as KubeUnavailable
    """Another instance holds the lock; it names that instance and what to do."""

    def __init__(self, message: str, *, holder: str) -> None:
        self.holder = holder
        super().__init__(message)


class InstanceLock:
    """An exclusive lock on `path` for as long as this object is held (see the module)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # "the device plugin sockets in /var/lib/kubelet/device-plugins"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `AlreadyRunning` naming the instance that holds it
        (`ConfigError` naming the file when it cannot be made or locked at all)."""
        try:
            fd = _open(self.path)
        except OSError as e:
            raise ConfigError(f"cannot create the lock file {self.path} ({e.strerror or e}); "
                              f"{self.what} must be writable by the agent") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError(f"cannot lock {self.path} ({e.strerror or e}); put "
                                  f"{self.what} on a local filesystem") from e
            raise AlreadyRunning(
                f"another Tessera instance ({holder or 'PID unknown'}) already serves "
                f"{self.what} (lock {self.path}); stop it first, or give this one another "
                "--socket-dir / --status-file", holder=holder) from e
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self._fd = fd

    def refresh(self) -> None:
        """Lock the file again if it was deleted or replaced (a kubelet restart wipes its
        directory); `AlreadyRunning` if another instance took the new file meanwhile."""
        if self._fd is None:
            return
        try:
            same = os.path.samestat(os.stat(self.path), os.fstat(self._fd))
        except OSError:
            same = False
        if not same:
            old, self._fd = self._fd, None
            os.close(old)
            self.acquire()

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock; the file stays (see the module)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_of(path: Path) -> str | None:
    """Who holds the lock at `path` ("PID 12, started …"), or None when nobody does: for
    `tessera status` to say whether the agent runs. Never takes the lock for long."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read(fd) or "PID unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""
