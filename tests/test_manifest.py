"""Manifests: formats, derived ids, bad rows, scanning a folder."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from archivox.errors import ManifestError
from archivox.fsutil import resolve_inside
from archivox.manifest import derive_item_id, items_from_records, read_manifest, scan, write_manifest
from media import write_wav
from signals import tone

ROWS = [
    {"path": "a/one.wav", "item_id": "", "collection": "oral", "language": "en", "interviewer": "K. Lee"},
    {"path": "a/two.flac", "item_id": "tape-2", "collection": "", "language": "", "interviewer": ""},
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_formats_round_trip_with_metadata(tmp_path, suffix):
    path = tmp_path / f"manifest{suffix}"
    write_manifest(items_from_records(ROWS), path)
    items = read_manifest(path)
    assert [i.path for i in items] == ["a/one.wav", "a/two.flac"]
    assert items[0].item_id == derive_item_id("a/one.wav") and items[1].item_id == "tape-2"
    assert items[0].metadata == {"interviewer": "K. Lee"} and items[0].language == "en"
    assert not any(i.error for i in items)


def test_derived_ids_are_stable_readable_and_distinct():
    assert derive_item_id("Tapes/Side A.wav") == derive_item_id("Tapes/Side A.wav")
    assert derive_item_id("Tapes/Side A.wav").startswith("tapes-side-a-wav-")
    assert derive_item_id("a b.wav") != derive_item_id("a_b.wav")
    assert derive_item_id("ünïcode.wav") == derive_item_id("u\u0308nïcode.wav")  # NFC and NFD spell one name


def test_bad_rows_become_item_errors_not_crashes(tmp_path):
    items = items_from_records(
        [{"path": "x.wav", "item_id": "same"}, {"path": "y.wav", "item_id": "same"}, {"path": "", "item_id": "z"}]
    )
    assert items[0].error == ""
    assert "duplicate item_id 'same'" in items[1].error and items[1].item_id != "same"
    assert "empty path" in items[2].error


def test_missing_path_column_is_a_clear_error(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"file": ["a.wav"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="no 'path' column"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "absent.csv")


def test_paths_and_symlinks_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "inner").mkdir(parents=True)
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"x")
    (root / "inner" / "link.wav").symlink_to(outside)
    (root / "inner" / "ok.wav").write_bytes(b"x")
    assert resolve_inside(root, "inner/ok.wav") == (root / "inner" / "ok.wav").resolve()
    for bad in ["../secret.wav", "inner/../../secret.wav", "inner/link.wav", str(outside)]:
        with pytest.raises(ManifestError, match="outside the archive root|absolute"):
            resolve_inside(root, bad)


def test_scan_keeps_only_readable_media(tmp_path):
    root = tmp_path / "archive"
    write_wav(root / "tapes" / "one.wav", tone(300, 0.5), 48_000)
    write_wav(root / "two.wav", np.zeros((2, 4800), np.float32), 48_000)
    (root / "notes.txt").write_text("transcriber's notes")
    (root / "empty.wav").write_bytes(b"")
    (root / ".hidden").mkdir()
    write_wav(root / ".hidden" / "x.wav", tone(300, 0.5), 48_000)
    outside = tmp_path / "elsewhere.wav"
    write_wav(outside, tone(300, 0.5), 48_000)
    os.symlink(outside, root / "escape.wav")
    items = scan(root, collection="c1")
    assert [i.path for i in items] == ["tapes/one.wav", "two.wav"]
    assert {i.collection for i in items} == {"c1"}
