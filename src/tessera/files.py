"""Noticing that a config file (or a directory of them) changed, by its content."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path


def content_digest(path: Path | None) -> str:
    """Digest of a file's content, or of a directory's visible files and their names ("" for
    no path). Content, not modification times: a ConfigMap update swaps symlinks, and two
    quick writes can share a timestamp. An unreadable file counts as empty, so it reads as a
    change once it can be read again."""
    if path is None:
        return ""
    digest = hashlib.sha256()
    files = [path] if not path.is_dir() else sorted(
        p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    for p in files:
        digest.update(p.name.encode())
        with contextlib.suppress(OSError):
            digest.update(p.read_bytes())
    return digest.hexdigest()
