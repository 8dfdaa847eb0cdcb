"""Fixity: SHA-256 of originals, read-only."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_BLOCK_BYTES = 4 << 20

_cache: dict[tuple[str, int, int], str] = {}
_cache_lock = threading.Lock()


def sha256_file(path: Path, *, cached: bool = False) -> str:
    """SHA-256 of a file's bytes.

    The file is opened with ``O_RDONLY`` only: fixity must never be the thing
    that touches an original. ``cached=True`` reuses a digest computed in this
    process for the same (path, size, mtime); fixity checks of originals never
    use it, model files may.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if cached:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
    hasher = hashlib.sha256()
    flags = os.O_RDONLY | (getattr(os, "O_NOATIME", 0) if _owned(stat) else 0)
    descriptor = os.open(path, flags)
    with os.fdopen(descriptor, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
            hasher.update(block)
    digest = hasher.hexdigest()
    with _cache_lock:
        _cache[key] = digest
    return digest


def _owned(stat: os.stat_result) -> bool:
    # O_NOATIME keeps archive access times meaningful but is only allowed to the owner.
    return hasattr(os, "getuid") and stat.st_uid == os.getuid()
