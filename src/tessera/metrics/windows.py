"""Events counted over a sliding window, as dcgm-exporter's `DCGM_EXP_*_COUNT` metrics are.

`EventWindow` keeps (time, key) of each event for `window_s` seconds and answers how many of
each key are in the window now. Bounded: past `max_kept` events the oldest go first, so a GPU
storming XIDs cannot grow memory without end (the counts then read "at least").
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
MAX_KEPT = 100_000


class EventWindow(Generic[K]):
    """See the module docstring. Times are `time.monotonic()` seconds."""

    def __init__(self, window_s: float, max_kept: int = MAX_KEPT) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, K]] = deque(maxlen=max_kept)

    def add(self, at: float, keys: Iterable[K]) -> None:
        self._events.extend((at, key) for key in keys)

    def counts(self, now: float) -> dict[K, int]:
        """Key -> events within the window ending at `now` (older ones are dropped)."""
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        return dict(Counter(key for _, key in self._events))
