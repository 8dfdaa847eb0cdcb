"""Atomic file writes and path safety."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import Iterator

from archivox.errors import ArchivoxError, ManifestError

OUTPUT_LOCK = ".archivox-output.lock"


@contextlib.contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    The temporary name starts with a dot and ends in ``.tmp`` so that
    Parquet readers (which skip dot-files) and globs such as ``*.flac`` never
    pick up a half-written file. On error the temporary file is removed and
    ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_text_atomic(destination: Path, text: str) -> Path:
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(destination)


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve ``relative`` against ``root``, refusing anything that leads outside it.

    Symlinks are followed before the check, so a link inside the archive that
    points elsewhere is refused as well as ``../`` and absolute paths.
    """
    if not relative or not str(relative).strip():
        raise ManifestError("the manifest row has an empty path")
    if "\x00" in relative:
        raise ManifestError(f"path {relative!r} contains a NUL byte")
    root_real = Path(os.path.realpath(root))
    candidate = Path(relative)
    if candidate.is_absolute():
        raise ManifestError(f"path {relative!r} is absolute; manifest paths must be relative to the archive root {root}")
    real = Path(os.path.realpath(root_real / candidate))
    if real != root_real and root_real not in real.parents:
        raise ManifestError(f"path {relative!r} leads outside the archive root {root} (to {real}); refusing it")
    return real


@contextlib.contextmanager
def output_lock(out: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the output folder's lock: runs share it, ``archivox prune`` takes it alone.

    A run waits while a prune holds it; a prune refuses at once while any
    run (or batch of a nightly run) holds it, rather than remove files that
    run is writing or about to reuse.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / OUTPUT_LOCK, "a+") as handle:
        if exclusive:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchivoxError(
                    f"a run is writing to {out}; prune when it has finished (nightly runs can prune "
                    "after their batches: prune_missing)"
                ) from None
        else:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
