"""Background work, done the same way everywhere: ending the tasks a component started, and
running CPU-bound work (parsing, planning) off the event loop.

`off_loop` runs a function in a thread of its own, marked daemon: the loop that serves the
kubelet keeps answering while it runs, and a process told to stop (SIGTERM) exits at once
instead of waiting for it — a `ThreadPoolExecutor` worker would be joined at interpreter
exit, however long its parse still had to go. Use it only for work that can be abandoned
(pure computations, reads); work that must end at a safe point (a MIG apply) stays in an
executor and is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, MutableSequence
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel_all(tasks: MutableSequence[asyncio.Task[None]]) -> None:
    """Cancel every task, wait until each has finished, and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()


async def off_loop(fn: Callable[..., T], *args: Any, name: str = "tessera-work") -> T:
    """`fn(*args)` in a daemon thread; its result or exception, awaited on the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return  # the caller was cancelled meanwhile
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        outcome: tuple[bool, Any]
        try:
            outcome = (True, fn(*args))
        except BaseException as e:
            outcome = (False, e)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
