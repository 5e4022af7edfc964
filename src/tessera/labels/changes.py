"""The smallest patch that takes a node's labels to the labels it should have.

Only changed labels are sent, so a steady node is never patched (every Node update wakes the
scheduler and every controller watching Nodes), and only labels this labeler owns are ever
removed: the node's other labels belong to people and to other components.
"""

from __future__ import annotations

from collections.abc import Mapping

from tessera.labels.keys import owned


def label_changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str | None]:
    """Labels to set (new or changed value) and to remove (None: owned, in `current`, not
    in `wanted`); empty when nothing has to change. The shape of a JSON merge patch of
    `metadata.labels`."""
    patch: dict[str, str | None] = {
        key: value for key, value in sorted(wanted.items()) if current.get(key) != value
    }
    patch.update({key: None for key in sorted(current) if key not in wanted and owned(key)})
    return patch
