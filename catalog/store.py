"""The catalog on disk: a folder of Parquet datasets written as atomic part files.

Layout::

    CATALOG/items/part-*.parquet       one file per item and run (many writers at once)
    CATALOG/items/compact-*.parquet    written by compaction
    CATALOG/stages/ ... segments/ ... words/ ... runs/

Each writer (a thread, a process, a worker on another machine) writes whole
files under a dot-prefixed temporary name and renames them into place, so a
reader never sees a half-written file and pyarrow, pandas and DuckDB globs
(``items/*.parquet``) all skip the temporaries.

Compaction merges the live files of a dataset into one. It writes the merged
file first and deletes the inputs after; the merged file names its inputs in
its Parquet metadata, and :meth:`Catalog.files` leaves out any input that a
merged file already holds, so readers that go through archivox never count a
row twice, even in the moment between the rename and the deletes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from archivox.catalog.schema import DATASETS
from archivox.errors import ConfigError
from archivox.fsutil import atomic_path

_COMPACTED_FROM = b"archivox.compacted_from"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_json(value: Any) -> str:
    """JSON text for the catalog's free-form columns (non-finite floats become null)."""
    return json.dumps(_json_safe(value), sort_keys=True, ensure_ascii=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalars
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)


def _new_name(prefix: str) -> str:
    return f"{prefix}-{utc_now().strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:12]}.parquet"


class Catalog:
    """A catalog folder. Cheap to construct; safe to share between threads and processes."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def dataset_dir(self, dataset: str) -> Path:
        if dataset not in DATASETS:
            raise ConfigError(f"unknown catalog dataset {dataset!r}; valid ones are {', '.join(DATASETS)}")
        return self.root / dataset

    # -- writing -------------------------------------------------------------

    def append(self, dataset: str, rows: Iterable[Mapping[str, Any]]) -> Path | None:
        """Write ``rows`` as one new part file of ``dataset``; None when there are no rows."""
        rows = list(rows)
        if not rows:
            return None
        folder = self.dataset_dir(dataset)
        schema = DATASETS[dataset]
        unknown = set().union(*(r.keys() for r in rows)) - set(schema.names)
        if unknown:
            raise ConfigError(f"{dataset}: columns {sorted(unknown)} are not in the schema {schema.names}")
        table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
        destination = folder / _new_name("part")
        with atomic_path(destination) as temporary:
            pq.write_table(table, temporary)
        return destination

    def write_item(self, item_row: Mapping[str, Any], children: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        """Record one item: its stages, segments and words first, its ``items`` row last.

        The ``items`` row is the commit mark: rows of other datasets whose
        (run_id, item_id) has no ``items`` row come from an attempt that died
        half-way, and search ignores them.
        """
        for dataset, rows in children.items():
            self.append(dataset, rows)
        self.append("items", [item_row])

    # -- reading -------------------------------------------------------------

    def files(self, dataset: str) -> list[Path]:
        """The live files of ``dataset``: every file whose rows are not also held by a merged file."""
        return self._listing(dataset)[0]

    def _listing(self, dataset: str) -> tuple[list[Path], list[Path]]:
        """(live files, files whose rows a merged file already holds)."""
        folder = self.dataset_dir(dataset)
        if not folder.is_dir():
            return [], []
        for _ in range(5):
            try:
                names = sorted(p.name for p in folder.glob("*.parquet") if not p.name.startswith("."))
                superseded: set[str] = set()
                for name in names:
                    if name.startswith("compact-"):
                        metadata = pq.read_schema(folder / name).metadata or {}
                        superseded.update(json.loads(metadata.get(_COMPACTED_FROM, b"[]")))
                return (
                    [folder / n for n in names if n not in superseded],
                    [folder / n for n in names if n in superseded],
                )
            except FileNotFoundError:
                # A compaction deleted a file between our listing and reading it; list again.
                time.sleep(0.05)
        raise RuntimeError(f"the files of {folder} kept changing while being listed")

    def read(self, dataset: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The whole dataset as a DataFrame (empty, with the schema's columns, when there is nothing yet)."""
        schema = DATASETS[dataset]
        return self._table(dataset).to_pandas()[columns or schema.names]

    def rows_for(self, dataset: str, *, run_id: str, item_id: str) -> list[dict[str, Any]]:
        """The rows of one item in one run, read with a filter (a catalog's datasets can be large)."""
        import pyarrow.compute as pc

        return self._table(dataset, (pc.field("run_id") == run_id) & (pc.field("item_id") == item_id)).to_pylist()

    def _table(self, dataset: str, condition=None) -> pa.Table:
        """The live files of ``dataset`` as one table with its schema, rows filtered by ``condition``.

        Compaction may replace files between listing and reading them; the
        listing is then taken again.
        """
        import pyarrow.dataset as ds

        schema = DATASETS[dataset]
        for _ in range(5):
            files = self.files(dataset)
            if not files:
                return schema.empty_table()
            try:
                return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table(filter=condition)
            except FileNotFoundError:
                time.sleep(0.05)
        raise RuntimeError(f"the files of {self.dataset_dir(dataset)} kept changing while being read")

    def item_rows(self) -> pd.DataFrame:
        """Every ``items`` row, newest first."""
        rows = self.read("items")
        return rows.sort_values("finished_at", ascending=False, kind="stable").reset_index(drop=True)

    def latest_items(self) -> pd.DataFrame:
        """The newest ``items`` row of each item."""
        return self.item_rows().drop_duplicates("item_id", keep="first").reset_index(drop=True)

    def latest_ok(self) -> pd.DataFrame:
        """For each item, its newest row with status ``ok`` (the one that search and reruns trust).

        An item withdrawn since (``archivox prune``) has none.
        """
        rows = self.item_rows()
        rows = rows[rows["status"].isin(["ok", "withdrawn"])].drop_duplicates("item_id", keep="first")
        return rows[rows["status"] == "ok"].reset_index(drop=True)

    def duckdb(self):
        """A DuckDB connection with one view per dataset over its live files."""
        import duckdb

        connection = duckdb.connect()
        for dataset, schema in DATASETS.items():
            files = [str(f) for f in self.files(dataset)]
            if files:
                # union_by_name: catalogs written before a column was added still read.
                connection.execute(
                    f"CREATE VIEW {dataset} AS SELECT * FROM read_parquet({_sql_list(files)}, union_by_name = true)"
                )
            else:
                connection.register(f"_{dataset}_empty", schema.empty_table())
                connection.execute(f"CREATE VIEW {dataset} AS SELECT * FROM _{dataset}_empty")
        return connection

    # -- compaction ----------------------------------------------------------

    @contextlib.contextmanager
    def _compaction_lock(self) -> Iterator[bool]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".compaction.lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def compact(self, datasets: Iterable[str] | None = None, min_files: int = 2) -> dict[str, int]:
        """Merge each dataset's live files into one; returns how many files each merge replaced.

        Safe while writers run: it only touches files that existed when it
        listed them, and new part files are left for the next compaction. Only
        one compaction runs at a time per catalog (others return at once).
        """
        merged: dict[str, int] = {}
        with self._compaction_lock() as acquired:
            if not acquired:
                return merged
            for dataset in datasets or DATASETS:
                files, superseded = self._listing(dataset)
                # Left behind by a compaction that stopped between its rename and
                # its deletes; their rows are already in a merged file.
                for f in superseded:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f)
                if len(files) < min_files:
                    continue
                schema = DATASETS[dataset]
                table = pa.concat_tables([pq.read_table(f, schema=schema) for f in files])
                inputs = json.dumps([f.name for f in files]).encode()
                table = table.replace_schema_metadata({_COMPACTED_FROM: inputs})
                destination = self.dataset_dir(dataset) / _new_name("compact")
                with atomic_path(destination) as temporary:
                    pq.write_table(table, temporary, compression="zstd")
                for f in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f)
                merged[dataset] = len(files)
        return merged


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
