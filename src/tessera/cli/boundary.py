"""The one place where a failure becomes what a user sees: one line on stderr and an exit
code, 2 for bad input (a config, a flag, a path given) and 1 for a failure at run time.

A traceback is for Tessera's developers, not its users: it is printed only with `--debug`
(or `TESSERA_DEBUG=1`). Kept light on imports: the root command loads it on every start.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import traceback

from tessera.errors import PermanentError, TesseraError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
MAX_LINE = 1000

_debug = False

# A path the user gave that cannot be used: bad input, not a failure of Tessera's.
_PATH_ERRORS = {
    errno.ENOENT: "does not exist; give an existing path",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory; a file belongs there",
    errno.EACCES: "permission denied; run as a user who may use it, or give another path",
    errno.EPERM: "operation not permitted; run as a user who may use it, or give another path",
    errno.EROFS: "read-only file system; give a writable path",
    errno.EEXIST: "already exists and is in the way; remove it or give another path",
    errno.ENAMETOOLONG: "the path is too long (a unix socket path has at most 107 bytes)",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENOSPC: "no space left on the device",
    errno.EADDRNOTAVAIL: "no such address on this machine; give one of its addresses",
}
_RUNTIME_OS_ERRORS = {
    errno.EADDRINUSE: "address already in use: another process serves there; stop it or "
                      "pick another port",
    errno.ECONNREFUSED: "connection refused: is the server running?",
}


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debugging() -> bool:
    return _debug or os.environ.get("TESSERA_DEBUG", "").lower() in ("1", "true", "yes", "on")


def exit_code(error: BaseException) -> int:
    if isinstance(error, PermanentError | socket.gaierror):
        return EXIT_BAD_INPUT
    if isinstance(error, OSError) and error.errno in _PATH_ERRORS:
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def describe(error: BaseException) -> str:
    """One line that names the thing and what to do."""
    if isinstance(error, TesseraError):
        text = str(error)
    elif isinstance(error, OSError):
        text = _describe_os_error(error)
    else:
        text = (f"unexpected {type(error).__name__}: {error} (a bug in Tessera: rerun with "
                "--debug for the traceback and report it)")
    return one_line(text)


def _describe_os_error(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return (f"cannot resolve the address ({error.strerror}): give an IP address or a "
                "host name of this machine")
    reason = (_PATH_ERRORS.get(error.errno or 0) or _RUNTIME_OS_ERRORS.get(error.errno or 0)
              or error.strerror or str(error))
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def one_line(text: str, limit: int = MAX_LINE) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(one_line(message))}")


def report(error: BaseException) -> int:
    """Print `error` as one line (with its traceback first when debugging); its exit code."""
    if debugging():
        traceback.print_exception(error, file=sys.stderr)
    print_error(describe(error))
    return exit_code(error)
