"""A node without a cluster: labels and annotations in a local JSON file.

Standalone (`--no-kube`, or a simulated node with no API server), the agent reads and
writes its node's metadata here through the same interface as the Kubernetes seam, so the
same code runs; `tessera gpu disable` and `tessera status` use the same file. Writes are
atomic; a watch notices changes made by another process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError
from tessera.kube import NodeView, PodView
from tessera.textinput import read_json

log = logging.getLogger(__name__)
_ONE_BY_ONE = 3  # changes logged one per line at info level; more: one line


def state_dir() -> Path:
    """Where a standalone agent keeps its files: `$XDG_STATE_HOME/tessera`."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tessera"


def default_node_file(node_name: str) -> Path:
    return state_dir() / f"node-{node_name}.json"


class LocalNode:
    """The node's labels and annotations in a file; the `NodeApi` of a standalone agent."""

    def __init__(self, node_name: str, path: Path | None = None, *,
                 poll_seconds: float = 0.2) -> None:
        self.name = node_name
        self.path = path or default_node_file(node_name)
        self.poll_seconds = poll_seconds
        self.requests = 0
        self.patches = 0
        self.events: list[tuple[str, str, str]] = []

    def _read(self) -> dict[str, Any]:
        if not os.path.lexists(self.path):
            return {"labels": {}, "annotations": {}, "version": 0}
        data = read_json(self.path, what="node file", error=self._not_a_node_file)
        try:
            return {"labels": dict(data.get("labels", {})),
                    "annotations": dict(data.get("annotations", {})),
                    "version": int(data.get("version", 0))}
        except (AttributeError, TypeError, ValueError) as e:
            raise self._not_a_node_file("not a node file Tessera wrote") from e

    def _not_a_node_file(self, reason: str) -> ConfigError:
        return ConfigError(f"node file {self.path}: {reason}; delete it to start from an "
                           "empty node")

    def _write(self, data: Mapping[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        except OSError as e:
            raise ConfigError(f"node file {self.path}: cannot write in {self.path.parent} "
                              f"({e.strerror or e}); make it a writable directory or give "
                              "another with --node-file or XDG_STATE_HOME") from e
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a failed write leaves nothing behind
            raise

    def _view(self, data: Mapping[str, Any]) -> NodeView:
        return NodeView(name=self.name, labels=dict(data["labels"]),
                        annotations=dict(data["annotations"]),
                        resource_version=str(data["version"]))

    async def get(self) -> NodeView:
        self.requests += 1
        return self._view(self._read())

    async def watch(self) -> AsyncIterator[NodeView]:
        last: NodeView | None = None
        while True:
            view = self._view(self._read())
            if last is None or (view.labels, view.annotations) != (last.labels,
                                                                   last.annotations):
                last = view
                yield view
            await asyncio.sleep(self.poll_seconds)

    async def patch(self, *, labels: Mapping[str, str | None] | None = None,
                    annotations: Mapping[str, str | None] | None = None) -> NodeView | None:
        data = self._read()
        changed = False
        for key, updates in (("labels", labels or {}), ("annotations", annotations or {})):
            for name, value in updates.items():
                if data[key].get(name) == value:
                    continue
                changed = True
                if value is None:
                    data[key].pop(name, None)
                else:
                    data[key][name] = value
        if not changed:
            return None
        self.requests += 1
        self.patches += 1
        data["version"] += 1
        self._write(data)
        changes = {**(labels or {}), **(annotations or {})}
        # A state label changing is news; the feature labels' first write is two dozen lines
        # that say only "labelled", so a bulk change is one line and the keys go to debug.
        level = logging.INFO if len(changes) <= _ONE_BY_ONE else logging.DEBUG
        if level == logging.DEBUG:
            log.info("node %s: %d labels and annotations changed", self.name, len(changes))
        for name, value in changes.items():
            log.log(level, "node %s: %s=%s", self.name, name,
                    "(removed)" if value is None else value)
        return self._view(data)

    async def event(self, reason: str, message: str, *, type: str = "Normal") -> None:
        self.events.append((type, reason, message))
        (log.warning if type == "Warning" else log.info)("event %s: %s", reason, message)

    async def pods(self) -> list[PodView]:
        return []

    async def close(self) -> None:
        """Nothing to release: every call opens and closes the file."""
