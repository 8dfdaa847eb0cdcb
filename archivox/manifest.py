"""Archive manifests: typed records read from CSV, Parquet or JSON Lines.

A manifest needs one column, ``path`` (relative to the archive root).
``item_id``, ``collection`` and ``language`` are optional; every other column
is kept as the item's metadata. Problems with a single row never stop the
run: the row becomes an item that carries its error, and the run records it
as failed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from archivox.errors import ManifestError

KNOWN_COLUMNS = ("path", "item_id", "collection", "language")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class ManifestItem:
    """One manifest row."""

    item_id: str
    path: str
    row: int
    collection: str = ""
    language: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    error: str = ""  # set when the row itself is wrong; the item is then recorded as failed


def derive_item_id(path: str) -> str:
    """A stable, readable id from a relative path: a slug plus a short hash.

    The hash keeps ids unique when two paths slugify alike (``a b.wav`` and
    ``a_b.wav``); the slug keeps them readable in the catalog.
    """
    normalised = unicodedata.normalize("NFC", path.replace("\\", "/"))
    ascii_text = unicodedata.normalize("NFKD", normalised).encode("ascii", "ignore").decode().lower()
    slug = _SLUG.sub("-", ascii_text).strip("-")[-48:].strip("-") or "item"
    digest = hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix == ".parquet":
            return pd.read_parquet(path).astype(str)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False).astype(str)
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    raise ManifestError(f"manifest {path} has suffix {suffix!r}; use one of {', '.join(MANIFEST_SUFFIXES)}")


def _clean(value: object) -> str:
    text = "" if value is None else str(value)
    return "" if text in ("nan", "None", "NaN", "<NA>") else text.strip()


def read_manifest(path: Path) -> list[ManifestItem]:
    """Read a manifest; rows with a problem come back with ``error`` set."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    table = _read_table(path)
    if "path" not in table.columns:
        raise ManifestError(
            f"manifest {path} has no 'path' column (columns: {', '.join(map(str, table.columns)) or 'none'}); "
            "add one holding each file's path relative to the archive root"
        )
    return items_from_records(table.to_dict(orient="records"))


def items_from_records(records: Iterable[dict]) -> list[ManifestItem]:
    items: list[ManifestItem] = []
    first_row_of: dict[str, int] = {}
    for row_number, record in enumerate(records, start=1):
        rel_path = _clean(record.get("path"))
        item_id = _clean(record.get("item_id")) or (derive_item_id(rel_path) if rel_path else f"row-{row_number}")
        metadata = {str(k): _clean(v) for k, v in record.items() if k not in KNOWN_COLUMNS and _clean(v)}
        error = ""
        if not rel_path:
            error = f"manifest row {row_number} has an empty path"
        elif item_id in first_row_of:
            error = f"duplicate item_id {item_id!r}: row {row_number} repeats row {first_row_of[item_id]}"
            # Keep the duplicate visible in the catalog without overwriting the first row's id.
            item_id = f"{item_id}#row{row_number}"
        first_row_of.setdefault(item_id, row_number)
        items.append(
            ManifestItem(
                item_id=item_id,
                path=rel_path,
                row=row_number,
                collection=_clean(record.get("collection")),
                language=_clean(record.get("language")),
                metadata=metadata,
                error=error,
            )
        )
    return items


def write_manifest(items: Iterable[ManifestItem], destination: Path) -> Path:
    """Write a manifest as CSV, Parquet or JSON Lines (by suffix), atomically."""
    from archivox.fsutil import atomic_path

    destination = Path(destination)
    rows = [
        {"path": i.path, "item_id": i.item_id, "collection": i.collection, "language": i.language, **i.metadata}
        for i in items
    ]
    table = pd.DataFrame(rows, columns=None if rows else list(KNOWN_COLUMNS))
    suffix = destination.suffix.lower()
    with atomic_path(destination) as temporary:
        if suffix == ".csv":
            table.to_csv(temporary, index=False)
        elif suffix == ".parquet":
            table.to_parquet(temporary, index=False)
        elif suffix in (".jsonl", ".ndjson"):
            table.to_json(temporary, orient="records", lines=True, force_ascii=False)
        else:
            raise ManifestError(f"cannot write a manifest with suffix {suffix!r}; use one of {', '.join(MANIFEST_SUFFIXES)}")
    return destination


def scan(root: Path, *, collection: str = "") -> list[ManifestItem]:
    """Every file under ``root`` that ffmpeg can read audio from, as manifest rows.

    Hidden files and folders (names starting with a dot) are skipped, as are
    symlinks that lead outside the root.
    """
    from archivox.fsutil import resolve_inside
    from archivox.tasks.extract import has_audio

    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a folder")
    items = []
    for candidate in sorted(root.rglob("*")):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not candidate.is_file():
            continue
        try:
            resolve_inside(root, str(relative))
        except ManifestError:
            continue
        if candidate.stat().st_size == 0 or not has_audio(candidate):
            continue
        rel = relative.as_posix()
        items.append(ManifestItem(item_id=derive_item_id(rel), path=rel, row=len(items) + 1, collection=collection))
    return items
