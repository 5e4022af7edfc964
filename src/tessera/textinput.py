"""Reading what a user hands Tessera: a file as bounded bytes, decoded as UTF-8, and YAML or
JSON loaded strictly.

Every parser of user input (mig-parted configs, explicit layouts, device plugin configs,
counters files, state files) reads through here, so that each kind of bad input fails the
same way everywhere: one line naming the file and what to do, raised as the ConfigError
subclass the caller asks for. The loader is safe in time and memory on hostile input: the
file size is bounded, aliases are counted as if expanded ("billion laughs" is refused before
anything walks the data), nesting depth is bounded, a key given twice and a key that is a
list or a mapping are refused with their line.

This module sits below every layer: any part of Tessera may import it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tessera.errors import ConfigError

MAX_FILE_BYTES = 1024 * 1024
"""Largest input file read: a ConfigMap holds at most 1 MiB; NVIDIA's biggest config is ~20 KiB."""
MAX_DEPTH = 64
"""Deepest nesting of lists and mappings: the formats read here need fewer than 10 levels."""
MAX_NODES = 100_000
"""Most values a document may hold with its aliases expanded: bounds what any later walk costs."""
MAX_MESSAGE = 200
"""Longest piece of a parser's own message or of user text quoted in an error line."""

ErrorFactory = Callable[[str], ConfigError]
"""Makes the caller's error from a reason; the factory adds the source (file, config)."""

_BOM = b"\xef\xbb\xbf"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line, clipped: for quoting parser messages and user input in errors."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def default_error(source: str) -> ErrorFactory:
    return lambda reason: ConfigError(f"{source}: {reason}")


# -- bytes -----------------------------------------------------------------------------------


def read_bytes(path: str | Path, *, error: ErrorFactory | None = None,
               max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """The file's bytes, at most `max_bytes`; every OS error becomes `error(reason)` naming
    what to do. A FIFO or a device is refused rather than read (it could block forever)."""
    error = error or default_error(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(_os_reason(e, what)) from e
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"is a directory; give the path of a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"not a regular file; give the path of a {what}")
        if info.st_size > max_bytes:
            raise error(_too_big(info.st_size, max_bytes))
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # it grew while being read
                raise error(_too_big(size, max_bytes))
        return b"".join(chunks)
    except OSError as e:
        raise error(_os_reason(e, what)) from e
    finally:
        os.close(fd)


def _too_big(size: int, limit: int) -> str:
    return (f"{size} bytes is more than the {limit} Tessera reads from one file (a ConfigMap "
            "holds at most 1 MiB); is it the right file?")


def _os_reason(e: OSError, what: str) -> str:
    reasons = {
        errno.ENOENT: f"does not exist; give the path of an existing {what}",
        errno.EISDIR: f"is a directory; give the path of a {what}",
        errno.ENOTDIR: f"a part of the path is not a directory; give the path of a {what}",
        errno.EACCES: "permission denied; make it readable by the user Tessera runs as",
        errno.EPERM: "permission denied; make it readable by the user Tessera runs as",
        errno.ELOOP: "too many levels of symbolic links; point it at the file itself",
        errno.ENAMETOOLONG: "the path is too long",
    }
    return reasons.get(e.errno or 0, f"cannot read it: {e.strerror or e}")


# -- text ------------------------------------------------------------------------------------


def decode(data: bytes, *, error: ErrorFactory) -> str:
    """UTF-8 text (a leading byte-order mark is allowed and dropped); anything else is
    refused naming the line and byte offset, rather than guessed at."""
    body = data[len(_BOM):] if data.startswith(_BOM) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + (len(data) - len(body))
        line = body.count(b"\n", 0, e.start) + 1
        raise error(f"not UTF-8 text (line {line}, byte {offset} is 0x{body[e.start]:02x}); "
                    "save the file as UTF-8") from e


def read_stdin(*, error: ErrorFactory, max_bytes: int = MAX_FILE_BYTES) -> str:
    """Standard input (`-` for a file), bounded and decoded as a file is."""
    data = sys.stdin.buffer.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(_too_big(len(data), max_bytes))
    return decode(data, error=error)


def read_text(path: str | Path, *, error: ErrorFactory | None = None,
              max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> str:
    """`read_bytes` then `decode`: a user's text file, or one clear error."""
    error = error or default_error(str(path))
    return decode(read_bytes(path, error=error, max_bytes=max_bytes, what=what), error=error)


# -- YAML ------------------------------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """A document the strict loader will not build, with the line it is at."""

    def __init__(self, problem: str, node: Node | None, mark: Mark | None = None) -> None:
        self.problem = problem
        self.problem_mark = node.start_mark if node is not None else mark
        super().__init__(problem)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting depth and node count while composing, so a hostile
    document is refused before it costs much (PyYAML's composer recurses once per level),
    and refuses a key given twice (PyYAML keeps the last one silently: a GPU listed twice
    must be an error, not a coin toss) and a key that is not a plain value."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", None,
                               self._here())
            if self._nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values; is it the right file?", None,
                               self._here())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _here(self) -> Mark | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        return getattr(event, "start_mark", None)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                raise _Refused("a key must be a plain value (a name or a number), not a list "
                               "or a mapping", key_node)
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise _Refused("a key must be a plain value (a name or a number)", key_node)
            if key in seen:
                raise _Refused(f"key {one_line(str(key), 60)!r} appears twice (first at line "
                               f"{seen[key] + 1}); keep one", key_node)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """How many values the document holds with every alias expanded, counted over the node
    graph once per node (never by expanding), so a billion laughs is measured, not built.
    An alias that refers to its own anchor's inside is refused: no format here is cyclic."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # Iterative post-order walk: a deep graph must not recurse in Python.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        if key in open_nodes:
            raise _Refused("an alias refers to the value it is inside of; write the value out",
                           node)
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise _Refused("an alias refers to the value it is inside of; write the value "
                               "out", child)
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, *, error: ErrorFactory, what: str = "YAML") -> Any:
    """One YAML (or JSON) document, loaded strictly and bounded; errors name the line."""
    try:
        loader = StrictLoader(text)
    except yaml.YAMLError as e:  # the reader refuses control characters up front
        raise error(_yaml_reason(e, what)) from e
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values once its aliases are expanded; "
                           "write the config out without aliases", node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise error(_yaml_reason(e, what)) from e
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise error(f"not valid {what}: {one_line(str(e))}") from e
    finally:
        loader.dispose()


def _yaml_reason(e: yaml.YAMLError, what: str) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        return (f"not valid {what}: character U+{e.character:04X} at character {e.position} "
                "is not allowed in YAML text (is it a binary file?)")
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    return f"not valid {what}{at}: {one_line(str(problem))}"


def read_yaml(path: str | Path, *, error: ErrorFactory | None = None,
              what: str = "file") -> Any:
    error = error or default_error(str(path))
    return load_yaml(read_text(path, error=error, what=what), error=error)


# -- JSON ------------------------------------------------------------------------------------


def load_json(text: str, *, error: ErrorFactory) -> Any:
    """A JSON document; a syntax error names line and column. Depth is bounded by the
    standard decoder's recursion, caught here."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except (ValueError, RecursionError) as e:
        raise error(f"not valid JSON: {one_line(str(e))}") from e


def read_json(path: str | Path, *, error: ErrorFactory | None = None,
              what: str = "file") -> Any:
    error = error or default_error(str(path))
    return load_json(read_text(path, error=error, what=what), error=error)
