"""A stand-in for NVIDIA's MPS control daemon and its client, for simulated nodes.

`python -m tessera.hardware.sim.mps daemon` plays `nvidia-cuda-mps-control -f` (a foreground
control daemon) and `python -m tessera.hardware.sim.mps client` plays `nvidia-cuda-mps-control`
fed commands on stdin, so the code that supervises MPS runs unchanged on a simulated node.
Like the real one, both find each other through `$CUDA_MPS_PIPE_DIRECTORY` (here, a unix
socket `control` in it) and the daemon logs to `$CUDA_MPS_LOG_DIRECTORY/control.log`.

Only the commands that set up GPU sharing are understood, one per line:
`set_default_active_thread_percentage <N>`, `get_default_active_thread_percentage`,
`set_default_device_pinned_mem_limit <dev> <value>` (`4096M`, `4G`),
`get_default_device_pinned_mem_limit <dev>` and `quit`. No MPS server or CUDA client exists
behind it. Standard library only: it runs wherever the simulator does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ENV_PIPE_DIRECTORY = "CUDA_MPS_PIPE_DIRECTORY"
ENV_LOG_DIRECTORY = "CUDA_MPS_LOG_DIRECTORY"
SOCKET_NAME = "control"
LOG_NAME = "control.log"
# A client that connects and then says nothing must not hold the daemon (it serves one
# connection at a time, as commands are few and short).
_IO_TIMEOUT_S = 10.0
_MEMORY = re.compile(r"^[0-9]+[KMGT]$")
_PROG = "tessera.hardware.sim.mps"


@dataclass
class _Settings:
    """What the daemon would hand to the next MPS server it starts."""

    thread_percentage: float = 100.0
    pinned_limits: dict[str, str] = field(default_factory=dict)

    def answer(self, command: str) -> tuple[str, bool]:
        """The reply to one command line, and whether the daemon is to quit."""
        match command.split():
            case ["get_default_active_thread_percentage"]:
                return f"{self.thread_percentage:.1f}", False
            case ["set_default_active_thread_percentage", value]:
                try:
                    percentage = float(value)
                except ValueError:
                    percentage = -1.0
                if not 0 < percentage <= 100:
                    return f"Invalid percentage {value!r}: give a number in (0, 100]", False
                self.thread_percentage = percentage
                return "", False
            case ["get_default_device_pinned_mem_limit", device]:
                return self.pinned_limits.get(device, "unset"), False
            case ["set_default_device_pinned_mem_limit", device, value]:
                if not _MEMORY.match(value.upper()):
                    return f"Invalid memory limit {value!r}: give a size like 4096M or 4G", False
                self.pinned_limits[device] = value.upper()
                return "", False
            case ["quit"]:
                return "", True
            case _:
                return f"Unrecognized command: {command}", False


def _fail(message: str, code: int) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return code


def _pipe_directory() -> Path | None:
    value = os.environ.get(ENV_PIPE_DIRECTORY)
    return Path(value) if value else None


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def daemon() -> int:
    """Serve commands until `quit` or SIGTERM; 0 then, 2 when it cannot start."""
    pipe = _pipe_directory()
    if pipe is None:
        return _fail(f"{ENV_PIPE_DIRECTORY} is not set: name the directory for the control "
                     "socket", 2)
    log_dir = Path(os.environ.get(ENV_LOG_DIRECTORY) or pipe)
    path = pipe / SOCKET_NAME
    try:
        pipe.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        log = (log_dir / LOG_NAME).open("a", buffering=1)
    except OSError as e:
        return _fail(f"cannot prepare {pipe} / {log_dir}: {e}", 2)

    def note(message: str) -> None:
        log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')} Control {os.getpid()}] {message}\n")

    with log:
        if _answers(path):
            return _fail(f"an MPS control daemon already answers on {path}", 2)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a private name and rename once listening: whoever sees `control` can
        # connect at once, so a supervisor may poll for the file to know the daemon is up.
        staging = pipe / f".{SOCKET_NAME}.{os.getpid()}"
        try:
            staging.unlink(missing_ok=True)
            server.bind(str(staging))
            server.listen()
            os.replace(staging, path)
        except OSError as e:
            server.close()
            staging.unlink(missing_ok=True)
            return _fail(f"cannot listen on {path}: {e}", 2)

        def stop(signum: int, frame: FrameType | None) -> None:
            note("Terminated; exiting")
            raise SystemExit(0)  # unwinds through `finally`, which removes the socket

        signal.signal(signal.SIGTERM, stop)
        note(f"Starting control daemon on {path}")
        settings = _Settings()
        try:
            while True:
                connection, _ = server.accept()
                with connection:
                    if _serve(connection, settings, note):
                        note("Quit requested; exiting")
                        break
        except KeyboardInterrupt:
            note("Interrupted; exiting")
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            server.close()
            path.unlink(missing_ok=True)
    return 0


def _serve(connection: socket.socket, settings: _Settings, note: Callable[[str], None]) -> bool:
    """Answer one client's commands; True when one of them was `quit`."""
    connection.settimeout(_IO_TIMEOUT_S)
    try:
        with connection.makefile("rb") as lines:
            for raw in lines:
                command = raw.decode(errors="replace").strip()
                if not command:
                    continue
                reply, quit_ = settings.answer(command)
                note(f"Cmd: {command}" + (f" -> {reply}" if reply else ""))
                connection.sendall(reply.encode() + b"\n")
                if quit_:
                    return True
    except OSError as e:  # a client that hung up or went silent: serve the next one
        note(f"Client connection dropped: {e}")
    return False


def client() -> int:
    """Send stdin's commands to the daemon and print its replies; 1 when none answers."""
    pipe = _pipe_directory()
    if pipe is None:
        return _fail(f"{ENV_PIPE_DIRECTORY} is not set: name the control daemon's directory", 2)
    path = pipe / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(_IO_TIMEOUT_S)
        try:
            connection.connect(str(path))
        except OSError as e:
            return _fail(f"Cannot find MPS control daemon process on {path} ({e})", 1)
        try:
            with connection.makefile("rb") as replies:
                for line in sys.stdin:
                    command = line.strip()
                    if not command:
                        continue
                    connection.sendall(command.encode() + b"\n")
                    reply = replies.readline()
                    if not reply:
                        return _fail("the MPS control daemon closed the connection", 1)
                    text = reply.decode(errors="replace").rstrip("\n")
                    if text:
                        print(text, flush=True)
                    if command.split() == ["quit"]:
                        break
        except OSError as e:
            return _fail(f"lost the MPS control daemon on {path}: {e}", 1)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["daemon"]:
        return daemon()
    if argv == ["client"]:
        return client()
    return _fail(f"usage: python -m {_PROG} daemon|client", 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
