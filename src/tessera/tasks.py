"""Ending the background tasks a component started, the same way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableSequence


async def cancel_all(tasks: MutableSequence[asyncio.Task[None]]) -> None:
    """Cancel every task, wait until each has finished, and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
