"""The Parquet catalog: atomic parts, compaction under concurrent writers, readers, search."""

from __future__ import annotations

import threading
from datetime import timedelta

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from archivox.catalog.schema import DATASETS
from archivox.catalog.search import search
from archivox.catalog.store import Catalog, utc_now
from archivox.errors import ConfigError
from archivox.fsutil import atomic_path


def _item(catalog: Catalog, item_id: str, text: str, run_id: str = "r1", status: str = "ok", age_s: float = 0.0) -> None:
    words = [
        {"run_id": run_id, "item_id": item_id, "segment_index": 0, "word_index": i, "start_s": 10.0 + i, "end_s": 10.5 + i, "word": " " + w}
        for i, w in enumerate(text.split())
    ]
    catalog.write_item(
        {"run_id": run_id, "item_id": item_id, "path": f"{item_id}.wav", "status": status, "finished_at": utc_now() - timedelta(seconds=age_s)},
        {
            "segments": [{"run_id": run_id, "item_id": item_id, "segment_index": 0, "start_s": 10.0, "end_s": 15.0, "text": text, "avg_logprob": -0.3, "flags": []}],
            "words": words,
        },
    )


def test_schemas_are_explicit_and_rows_are_validated(tmp_path):
    assert set(DATASETS) == {"items", "stages", "segments", "words", "runs"}
    for column in ("item_id", "path", "collection", "sha256", "duration_s", "status", "error", "restored_path", "transcript_path", "metadata"):
        assert column in DATASETS["items"].names
    catalog = Catalog(tmp_path)
    with pytest.raises(ConfigError, match="not in the schema"):
        catalog.append("items", [{"item_id": "x", "colour": "red"}])
    with pytest.raises(ConfigError, match="unknown catalog dataset"):
        catalog.append("item", [{"item_id": "x"}])


def test_readers_agree_and_compaction_keeps_every_row_once(tmp_path):
    catalog = Catalog(tmp_path)
    for i in range(5):
        _item(catalog, f"i{i}", f"word{i} common words")
    assert len(catalog.files("items")) == 5
    merged = catalog.compact()
    assert merged["items"] == 5 and len(catalog.files("items")) == 1
    assert sorted(catalog.read("items")["item_id"]) == [f"i{i}" for i in range(5)]
    assert len(pd.read_parquet(tmp_path / "items")) == 5
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/items/*.parquet')").fetchall()[0][0] == 5
    assert catalog.duckdb().sql("SELECT count(*) FROM words").fetchall()[0][0] == 15


def test_a_crash_mid_write_leaves_nothing_visible(tmp_path):
    catalog = Catalog(tmp_path)
    _item(catalog, "kept", "hello")
    destination = tmp_path / "items" / "part-crash.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(destination) as temporary:
            temporary.write_bytes(b"PAR1 half a file")
            raise RuntimeError("killed")
    assert not destination.exists()
    assert list((tmp_path / "items").glob(".*")) == []
    assert list(catalog.read("items")["item_id"]) == ["kept"]


def test_merged_inputs_left_behind_are_not_counted_twice(tmp_path):
    # A compaction that stops between its rename and its deletes leaves the
    # inputs beside the merged file; readers must still see each row once.
    catalog = Catalog(tmp_path)
    for i in range(3):
        _item(catalog, f"i{i}", "x")
    parts = {p.name: p.read_bytes() for p in (tmp_path / "items").glob("part-*.parquet")}
    catalog.compact(["items"])
    for name, data in parts.items():
        (tmp_path / "items" / name).write_bytes(data)
    assert len(catalog.read("items")) == 3
    catalog.compact(["items"])
    assert len(list((tmp_path / "items").glob("part-*"))) == 0 and len(catalog.read("items")) == 3


def test_compaction_while_writers_run_loses_and_duplicates_nothing(tmp_path):
    catalog = Catalog(tmp_path)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(25):
                _item(Catalog(tmp_path), f"w{worker}-{i}", "text")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        catalog.compact()
        rows = catalog.read("items")
        assert rows["item_id"].is_unique
    for t in threads:
        t.join()
    catalog.compact()
    assert not errors
    rows = catalog.read("items")
    assert len(rows) == 75 and rows["item_id"].is_unique
    for f in catalog.files("items"):
        pq.read_metadata(f)  # every visible file is a whole Parquet file


def test_search_ranks_phrases_first_and_uses_the_latest_ok_run(tmp_path):
    catalog = Catalog(tmp_path)
    _item(catalog, "a", "the harbour lights were shining")
    _item(catalog, "b", "lights out said the harbour master")
    _item(catalog, "c", "nothing to see")
    _item(catalog, "a", "an older transcript of the harbour lights", run_id="r0", age_s=3600)  # same item, an older run
    _item(catalog, "d", "the harbour lights again", status="failed")  # failed rows are never searched
    hits = search(catalog, "Harbour lights!")
    assert [h.item_id for h in hits] == ["a", "b"]
    assert hits[0].score > hits[1].score
    assert hits[0].phrase_start_s == pytest.approx(11.0)  # "harbour" is the second word
    assert search(catalog, "zebra") == [] and search(catalog, "  ") == []
