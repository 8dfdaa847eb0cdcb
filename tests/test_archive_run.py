"""End to end on the embedded default: real ffmpeg, real Prefect, real faster-whisper, real Parquet.

The example archive (`archivox demo`) holds a WAV, a FLAC, an MP3, an MP4
video, a file with a hostile name, a zero-byte file, a truncated file and a
manifest row that points outside the root.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from archivox.catalog.search import search
from archivox.catalog.store import Catalog
from archivox.tasks.chain import STAGE_ORDER
from archivox.tasks.fixity import sha256_file

from archivox.cli import main
from archivox.config import RunOptions

pytestmark = pytest.mark.slow


def _fingerprints(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (sha256_file(p), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(prefect_harness, demo_archive, tmp_path_factory):
    from archivox.flows.archive_run import run_archive

    out = tmp_path_factory.mktemp("run") / "out"
    before = _fingerprints(demo_archive.root)
    summary = run_archive(demo_archive.manifest, demo_archive.root, out, out / "catalog", RunOptions())
    return {"out": out, "catalog": Catalog(out / "catalog"), "summary": summary, "before": before}


def _status(summary) -> dict[str, dict]:
    return {i["path"]: i for i in summary["items"]}


def test_good_items_are_restored_and_transcribed(first_run, demo_archive):
    statuses = _status(first_run["summary"])
    good = [i for i in demo_archive.items if i.expected_status == "ok"]
    assert len(good) >= 5
    for item in good:
        assert statuses[item.path]["status"] == "ok", statuses[item.path]["error"]
        restored = first_run["out"] / f"{item.path}.flac"
        info = sf.info(str(restored))
        assert (info.samplerate, info.subtype, info.channels) == (48_000, "PCM_24", 1)
        assert info.duration == pytest.approx(item.duration_s, abs=0.15)
        for suffix in (".srt", ".vtt", ".txt", ".json"):
            assert (first_run["out"] / f"{item.path}{suffix}").stat().st_size > 0
    assert not list(first_run["out"].rglob(".*.tmp")), "temporary files left behind"
    assert not list((first_run["out"] / ".archivox-work").glob("*/*")), "work folders left behind"


def test_bad_items_fail_with_clear_errors_and_the_run_goes_on(first_run):
    statuses = _status(first_run["summary"])
    assert statuses["broken/empty.wav"]["status"] == "failed"
    assert "empty" in statuses["broken/empty.wav"]["error"]
    assert statuses["broken/truncated.flac"]["status"] == "failed"
    assert "decode" in statuses["broken/truncated.flac"]["error"]
    assert statuses["../outside.wav"]["status"] == "failed"
    assert "outside the archive root" in statuses["../outside.wav"]["error"]
    assert first_run["summary"]["failed"] == 3


def test_originals_are_never_modified(first_run, demo_archive):
    assert _fingerprints(demo_archive.root) == first_run["before"]
    rows = first_run["catalog"].read("items")
    ok = rows[rows["status"] == "ok"]
    for row in ok.itertuples():
        assert row.sha256 == sha256_file(demo_archive.root / row.path)


def test_catalog_records_every_stage_segment_word_and_the_run(first_run):
    catalog = first_run["catalog"]
    items = catalog.read("items")
    assert len(items) == 8 and set(items["status"]) == {"ok", "failed"}
    stages = catalog.read("stages")
    ok_ids = set(items.loc[items["status"] == "ok", "item_id"])
    assert set(stages["item_id"]) == ok_ids
    per_item = stages.groupby("item_id")["stage"].apply(list)
    for names in per_item:
        assert names == sorted(names, key=STAGE_ORDER.index)
        assert {"dc", "loudness"} <= set(names)
    segments, words = catalog.read("segments"), catalog.read("words")
    assert set(segments["item_id"]) == ok_ids and len(words) > len(segments)
    # Voted words carry the share of the decodes that read them.
    assert words["agreement"].between(0.0, 1.0).all() and (words["agreement"] == 1.0).any()
    # By default every item's decodes are voted word by word, and the item row and its segments say so.
    assert set(segments["candidate"]) == {"vote"}
    for row in items[items["status"] == "ok"].itertuples():
        used = set(segments.loc[segments["item_id"] == row.item_id, "candidate"])
        assert used and row.asr_candidate == "vote"
    runs = catalog.read("runs")
    assert len(runs) == 1 and runs.iloc[0]["items_ok"] == 5 and "whisper" in runs.iloc[0]["models"]
    # Readable by DuckDB directly, without archivox.
    import duckdb

    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{catalog.root}/segments/*.parquet')").fetchall()[0][0]
    assert count == len(segments)


def test_search_finds_a_spoken_phrase_with_its_time(first_run, demo_archive):
    hits = search(first_run["catalog"], "shining over the old")
    assert hits, "the phrase was not found"
    best = hits[0]
    assert best.path == "interviews/smith_1962.wav"
    smith = demo_archive.item("interviews/smith_1962.wav")
    assert 0.0 <= best.phrase_start_s < smith.duration_s


def test_search_cli_prints_json_for_scripts(first_run, capsys):
    capsys.readouterr()
    assert main(["search", "shining over the old", "--catalog", str(first_run["catalog"].root), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"] == "interviews/smith_1962.wav" and hits[0]["score"] == 2.0
    assert main(["search", "shining over the old", "--catalog", str(first_run["catalog"].root),
                 "--collection", "no-such-collection"]) == 1


def test_a_second_run_does_no_work(first_run, demo_archive):
    from archivox.flows.archive_run import run_archive

    catalog = first_run["catalog"]
    stages_before = len(catalog.read("stages"))
    summary = run_archive(demo_archive.manifest, demo_archive.root, first_run["out"], catalog.root, RunOptions())
    assert summary["ok"] == 0 and summary["skipped"] == 5 and summary["failed"] == 3
    assert len(catalog.read("stages")) == stages_before
    failed = {i["path"]: i["error"] for i in summary["items"] if i["status"] == "failed"}
    assert "not retried" in failed["broken/truncated.flac"], failed
    assert "outside the archive root" in failed["../outside.wav"] and "empty" in failed["broken/empty.wav"], failed


def test_a_transcription_change_transcribes_again_and_keeps_the_restoration(first_run, demo_archive):
    """A new transcription setting must not restore a whole collection again: the kept ASR views are used."""
    from archivox.flows.archive_run import run_archive
    from archivox.tasks.transcribe import TranscribeOptions

    out, catalog = first_run["out"], first_run["catalog"]
    first = catalog.latest_ok().set_index("item_id")
    restored_before = _fingerprints(out)
    # A setting that changes the transcript (and, at one speed, costs CI a third of the decoding).
    options = RunOptions(transcribe=TranscribeOptions(stretch_factors=(1.0,)))
    assert options.restore_hash() == RunOptions().restore_hash() and options.config_hash() != RunOptions().config_hash()
    summary = run_archive(demo_archive.manifest, demo_archive.root, out, catalog.root, options)
    assert summary["ok"] == 5 and summary["failed"] == 3, summary

    after = _fingerprints(out)
    for item_id, row in first.iterrows():
        restored = str(Path(row["restored_path"]).relative_to(out))
        assert after[restored] == restored_before[restored], f"{restored} was written again"
        transcript = str(Path(row["transcript_path"]).relative_to(out))
        assert after[transcript][1] != restored_before[transcript][1], f"{transcript} was not transcribed again"

    now = catalog.latest_ok().set_index("item_id")
    stages = catalog.read("stages")
    for item_id, row in now.iterrows():
        assert row["run_id"] == summary["run_id"]
        assert row["restored_in_run"] == first.loc[item_id, "run_id"] and row["restore_key"] == first.loc[item_id, "restore_key"]
        assert row["diagnosis"] == first.loc[item_id, "diagnosis"] and row["duration_s"] == first.loc[item_id, "duration_s"]
        mine = stages[(stages["run_id"] == row["run_id"]) & (stages["item_id"] == item_id)]
        earlier = stages[(stages["run_id"] == first.loc[item_id, "run_id"]) & (stages["item_id"] == item_id)]
        assert len(mine) == len(earlier) > 0
        assert list(mine["params"]) == list(earlier["params"])
        evidence = json.loads(row["asr_evidence"])
        assert evidence, row["asr_evidence"]

    # A restoration change cannot reuse anything.
    views = sorted((out / ".archivox-asr-views").rglob("*.flac"))
    assert views and all(sf.info(str(v)).samplerate == 16_000 for v in views)
    louder = RunOptions(restore={"params": {"loudness": {"target_lufs": -20.0}}}, transcribe=TranscribeOptions(stretch_factors=(1.0,)))
    redone = run_archive(demo_archive.manifest, demo_archive.root, out, catalog.root, louder)
    rows = catalog.latest_ok().set_index("item_id")
    assert redone["ok"] == 5 and all(rows["restored_in_run"] == redone["run_id"])


def test_changed_files_and_config_are_redone_and_cli_reports(prefect_harness, demo_archive, tmp_path, capsys):
    root = tmp_path / "archive"
    shutil.copytree(demo_archive.root, root)
    out = tmp_path / "out"
    args = ["run", str(root / "manifest.csv"), "--root", str(root), "--out", str(out), "--stages", "dc,loudness", "--no-transcribe"]
    assert main(args) == 1  # some items failed: non-zero exit and a one-line summary
    assert "5 ok, 3 failed, 0 skipped" in capsys.readouterr().out

    data, rate = sf.read(root / "odd names" / "-rf ünïcode 'quoted'.wav")
    sf.write(root / "odd names" / "-rf ünïcode 'quoted'.wav", data * 0.5, rate)
    assert main(args) == 1
    assert "1 ok, 3 failed, 4 skipped" in capsys.readouterr().out

    assert main(args + ["--set", "loudness.target_lufs=-23"]) == 1  # a new configuration redoes everything
    assert "5 ok, 3 failed, 0 skipped" in capsys.readouterr().out
    assert main(args + ["--set", "loudness.target_lufs=-23", "--force"]) == 1
    assert "5 ok, 3 failed, 0 skipped" in capsys.readouterr().out

    assert main(["status", "--catalog", str(out / "catalog")]) == 1
    assert "8 items: 5 ok, 3 failed" in capsys.readouterr().out


def test_the_archive_root_is_refused_as_output(prefect_harness, demo_archive, capsys):
    args = ["run", str(demo_archive.manifest), "--root", str(demo_archive.root), "--out", str(demo_archive.root)]
    assert main(args) == 2
    assert "is the archive root" in capsys.readouterr().err


def test_prune_removes_only_the_outputs_of_items_that_left_the_archive(first_run, demo_archive, tmp_path, capsys):
    """A file leaves the manifest: `archivox prune` lists, then removes, its outputs and takes it out of search."""
    import os
    import time

    import pandas as pd
    from archivox.flows.archive_run import run_archive

    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    catalog = Catalog(out / "catalog")
    gone = "interviews/smith_1962.wav"
    rows = pd.read_csv(demo_archive.manifest, dtype=str, keep_default_na=False)
    smaller = tmp_path / "manifest.csv"
    rows[rows["path"] != gone].to_csv(smaller, index=False)
    stale = out / ".archivox-work" / "killed-run" / "item"
    fresh = out / ".archivox-work" / "running-run" / "item"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "original.wav").write_bytes(b"\0" * 100)
    two_days_ago = time.time() - 48 * 3600
    for path in (stale / "original.wav", stale, stale.parent):
        os.utime(path, (two_days_ago, two_days_ago))
    outputs = [out / f"{gone}{s}" for s in (".flac", ".srt", ".vtt", ".txt", ".json", ".qda.txt")]
    views = sorted((out / ".archivox-asr-views" / "interviews").glob("smith_1962.wav.*"))
    assert all(p.is_file() for p in outputs) and len(views) == 3, views
    kept_before = {k: v for k, v in _fingerprints(out).items() if "smith_1962" not in k and not k.startswith(("catalog", ".archivox-work"))}
    assert search(catalog, "shining over the old")

    capsys.readouterr()
    assert main(["prune", str(smaller), "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert f"{gone}: 9 output files" in listing and "killed-run" in listing and "running-run" not in listing
    assert "nothing removed" in listing and all(p.is_file() for p in outputs + views)

    only_one = tmp_path / "one.csv"
    rows[rows["path"] == gone].to_csv(only_one, index=False)
    assert main(["prune", str(only_one), "--out", str(out), "--delete"]) == 2
    assert "--allow-majority" in capsys.readouterr().err and all(p.is_file() for p in outputs)

    from archivox.fsutil import output_lock

    with output_lock(out, exclusive=False):  # as a run holds it
        assert main(["prune", str(smaller), "--out", str(out), "--delete"]) == 2
    assert "a run is writing to" in capsys.readouterr().err and all(p.is_file() for p in outputs + views)
    assert main(["prune", str(smaller), "--out", str(out), "--delete"]) == 0
    assert "removed 10 files" in capsys.readouterr().out
    assert not any(p.exists() for p in outputs + views) and not stale.parent.exists() and fresh.is_dir()
    after = _fingerprints(out)
    assert all(after.get(k) == v for k, v in kept_before.items()), "a kept item's output changed"
    assert not search(catalog, "shining over the old")
    smith = demo_archive.item(gone)
    assert smith.item_id not in set(catalog.latest_ok()["item_id"])
    assert main(["status", "--catalog", str(out / "catalog")]) == 1  # the demo's broken items
    assert "1 withdrawn" in capsys.readouterr().out
    assert main(["prune", str(smaller), "--out", str(out)]) == 0
    assert "0 item paths" in capsys.readouterr().out

    # The file comes back: it is restored and transcribed again, and found again.
    back = run_archive(demo_archive.manifest, demo_archive.root, out, catalog.root, RunOptions(), item_ids=[smith.item_id])
    assert back["ok"] == 1, back
    assert all(p.is_file() for p in outputs) and search(catalog, "shining over the old")
