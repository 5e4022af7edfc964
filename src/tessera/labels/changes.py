"""The smallest patch that takes a node's labels to the labels it should have.

Only changed labels are sent, so a steady node is never patched (every Node update wakes the
scheduler and every controller watching Nodes), and only labels this labeler owns are ever
removed: the node's other labels belong to people and to other components.

`gfd.timestamp` is where this matters most. GFD rewrites it on every pass (60 s), so with
GFD every GPU node's labels change every minute, saying only that GFD is alive. Here it
says when the labels were last generated with a change: it is renewed when another label of
ours is set, changed or removed, or when it is missing or not a timestamp, and is otherwise
kept, so a steady node is never patched for the clock alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from tessera.labels.keys import TIMESTAMP, owned


def label_changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str | None]:
    """Labels to set (new or changed value) and to remove (None: owned, in `current`, not
    in `wanted`); empty when nothing has to change. The shape of a JSON merge patch of
    `metadata.labels`."""
    patch: dict[str, str | None] = {
        key: value for key, value in sorted(wanted.items()) if current.get(key) != value
    }
    patch.update({key: None for key in sorted(current) if key not in wanted and owned(key)})
    return patch


def stamped(current: Mapping[str, str], wanted: Mapping[str, str], now: int) -> dict[str, str]:
    """`wanted` with `gfd.timestamp`: the node's own when nothing else of ours changes and it
    holds a timestamp, else `now` (unix seconds, as GFD writes it)."""
    unstamped = {k: v for k, v in wanted.items() if k != TIMESTAMP}
    others = {k: v for k, v in current.items() if k != TIMESTAMP}
    kept = current.get(TIMESTAMP, "")
    if kept.isdigit() and not label_changes(others, unstamped):
        return {**unstamped, TIMESTAMP: kept}
    return {**unstamped, TIMESTAMP: str(now)}
