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


def _item(
    catalog: Catalog,
    item_id: str,
    text: str | list[str],
    run_id: str = "r1",
    status: str = "ok",
    age_s: float = 0.0,
    collection: str = "",
    language: str = "en",
    flags: list[str] | None = None,
) -> None:
    """One item whose transcript is ``text`` (a list: one segment each), one word a second from 10 s."""
    segments, words, t = [], [], 10.0
    for index, segment_text in enumerate([text] if isinstance(text, str) else text):
        start = t
        for i, w in enumerate(segment_text.split()):
            words.append({"run_id": run_id, "item_id": item_id, "segment_index": index, "word_index": i,
                          "start_s": t, "end_s": t + 0.5, "word": " " + w})
            t += 1.0
        segments.append({"run_id": run_id, "item_id": item_id, "segment_index": index, "start_s": start, "end_s": t,
                         "text": segment_text, "avg_logprob": -0.3, "flags": flags or [], "language": language})
    catalog.write_item(
        {"run_id": run_id, "item_id": item_id, "path": f"{item_id}.wav", "status": status, "collection": collection,
         "finished_at": utc_now() - timedelta(seconds=age_s)},
        {"segments": segments, "words": words},
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


def test_a_catalog_written_before_a_column_was_added_still_reads(tmp_path):
    # Nightly runs append to catalogs that older releases wrote: words gained "agreement" in session 18.
    catalog = Catalog(tmp_path)
    _item(catalog, "old", "an older word list")
    (part,) = catalog.files("words")
    table = pq.read_table(part).drop(["agreement"])
    pq.write_table(table, part)
    assert "agreement" not in pq.read_schema(part).names
    catalog.append("words", [{"run_id": "r2", "item_id": "new", "segment_index": 0, "word_index": 0,
                              "start_s": 1.0, "end_s": 1.4, "word": " new", "agreement": 0.5}])
    for words in (catalog.read("words"), catalog.duckdb().sql("SELECT * FROM words").df()):
        by_item = words.groupby("item_id")["agreement"]
        assert by_item.count().to_dict() == {"new": 1, "old": 0} and by_item.size().to_dict() == {"new": 1, "old": 4}
    catalog.compact(["words"])
    assert catalog.read("words")["agreement"].tolist().count(0.5) == 1 and len(catalog.read("words")) == 5


def test_a_crash_mid_write_leaves_nothing_visible(tmp_path):
    catalog = Catalog(tmp_path)
    _item(catalog, "kept", "hello")
    destination = tmp_path / "items" / "part-crash.parquet"
    with pytest.raises(RuntimeError), atomic_path(destination) as temporary:
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


def test_search_finds_a_phrase_split_over_two_segments_at_its_first_word(tmp_path):
    catalog = Catalog(tmp_path)
    _item(catalog, "tape7", ["we walked down to the old", "mill by the river that morning"])
    hits = search(catalog, "the old mill by the river")
    assert hits[0].item_id == "tape7" and hits[0].score == 2.0
    assert hits[0].phrase_start_s == pytest.approx(14.0)  # "the" is the fifth word of the first segment
    assert hits[0].start_s == pytest.approx(10.0)  # reported against the segment where the phrase starts


def test_search_scores_partial_matches_on_content_words_not_stop_words(tmp_path):
    catalog = Catalog(tmp_path)
    _item(catalog, "chatter", "and then the rest of the day was the same")
    _item(catalog, "topic", "a letter about the harbour was read aloud")
    hits = search(catalog, "the story of the harbour")
    # "the" and "of" are in both segments; only "harbour" (a content word) makes a hit.
    assert [h.item_id for h in hits] == ["topic"]
    assert hits[0].score == pytest.approx(0.5)  # harbour, not story
    assert hits[0].phrase_start_s == pytest.approx(14.0)
    # A query made only of stop words is its own content.
    stop_only = search(catalog, "of the")
    assert [(h.item_id, h.score) for h in stop_only] == [("chatter", 2.0), ("topic", 0.5)]


def test_search_narrows_by_collection_and_language_and_shows_flags(tmp_path):
    catalog = Catalog(tmp_path)
    _item(catalog, "oral1", "the harbour lights", collection="oral", language="en")
    _item(catalog, "press1", "the harbour lights", collection="press", language="en", flags=["text_in_silence"])
    _item(catalog, "cy1", "goleuadau'r harbour lights", collection="oral", language="cy")
    assert sorted(h.item_id for h in search(catalog, "harbour lights")) == ["cy1", "oral1", "press1"]
    assert sorted(h.item_id for h in search(catalog, "harbour lights", collection="oral")) == ["cy1", "oral1"]
    assert [h.item_id for h in search(catalog, "harbour lights", collection="oral", language="cy")] == ["cy1"]
    flagged = search(catalog, "harbour lights", collection="press")
    assert flagged[0].flags == ("text_in_silence",)  # flagged text is shown with its flag, never hidden
    assert search(catalog, "harbour", collection="nowhere") == []
