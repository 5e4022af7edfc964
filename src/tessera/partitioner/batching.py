"""When a batch of waiting pods closes: after an idle window with no new pod, or at the cap
after its first pod, whichever comes first. Pure (the clock is passed in).

A short idle window (about 1-2 s) gathers the pods a Deployment's scale-up creates together,
so they are planned as one batch; the cap bounds how long a steady trickle of new pods can
hold a batch open. nos's 60 s / 10 s window was its main latency cost.
"""

from __future__ import annotations

from collections.abc import Iterable


class Batcher:
    def __init__(self, *, idle_s: float, cap_s: float) -> None:
        self.idle_s = idle_s
        self.cap_s = cap_s
        self._seen: set[str] = set()
        self._opened: float | None = None
        self._last: float | None = None

    def offer(self, pods: Iterable[str], now: float) -> None:
        """The pods waiting now; a pod not seen before opens or extends the batch."""
        current = set(pods)
        new = current - self._seen
        self._seen = current
        if new:
            if self._opened is None:
                self._opened = now
            self._last = now
        if not current:
            self._opened = self._last = None

    def due(self, now: float) -> bool:
        if self._opened is None or self._last is None:
            return False
        return now - self._last >= self.idle_s or now - self._opened >= self.cap_s

    def wake_in(self, now: float) -> float | None:
        """Seconds until the batch is due; None when none is open."""
        if self._opened is None or self._last is None:
            return None
        return max(0.0, min(self._last + self.idle_s, self._opened + self.cap_s) - now)

    def closed(self) -> None:
        """The batch was planned: the next one opens with the next new pod."""
        self._opened = self._last = None

    def reopen(self, now: float) -> None:
        """Plan the pods still waiting again (a node settled, or a pod left): they form a
        batch now, closing after the idle window."""
        if self._seen:
            self._opened = self._opened if self._opened is not None else now
            self._last = now
