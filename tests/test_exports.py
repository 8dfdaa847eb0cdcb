"""Every sidecar format is written atomically and parses back to the same cues."""

from __future__ import annotations

import json

import pytest

from archivox.errors import ConfigError
from archivox.tasks.exports import (
    FORMATS, parse_qda, parse_srt, parse_txt, parse_vtt, read_json, to_srt, to_vtt, write_sidecars,
)
from archivox.tasks.transcribe import Segment, Transcript, Word


def _transcript() -> Transcript:
    return Transcript(
        segments=[
            Segment(0, 0.0, 2.48, "Ask not what your country can do for you,", -0.21, 0.01, 1.2,
                    [Word(0.0, 0.4, " Ask", 0.9), Word(0.4, 0.7, " not", 0.95)]),
            Segment(1, 2.5, 3.0, "   ", -0.5, 0.9, 1.0),  # blank: skipped in subtitles
            Segment(2, 3725.25, 3731.9, "Fish & chips <cheap> --> now", -0.3, 0.02, 1.4, flags=[]),
            Segment(3, 3732.0, 3740.0, "Thank you. Thank you. Thank you. Thank you.", -1.6, 0.7, 3.1,
                    flags=["repetition", "compression_ratio"]),
        ],
        language="en", language_probability=0.97, duration_s=3745.0, model_name="tiny.en",
        model_sha256="ab" * 32, candidate="mix", evidence={"score": {"mix": -0.2, "restored": -0.4}},
    )


EXPECTED = [
    (0.0, 2.48, "Ask not what your country can do for you,"),
    (3725.25, 3731.9, "Fish & chips <cheap> --> now"),
    (3732.0, 3740.0, "Thank you. Thank you. Thank you. Thank you."),
]


def test_write_sidecars_names_and_round_trips(tmp_path):
    base = tmp_path / "item.wav"
    paths = write_sidecars(_transcript(), base)
    assert set(paths) == {"srt", "vtt", "txt", "json", "qda"}
    assert paths["srt"].name == "item.wav.srt" and paths["qda"].name == "item.wav.qda.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp files left

    assert parse_srt(paths["srt"].read_text()) == EXPECTED
    assert parse_txt(paths["txt"].read_text()) == EXPECTED
    vtt = parse_vtt(paths["vtt"].read_text())
    assert vtt == EXPECTED
    # Tenths of a second is all the QDA time marks hold.
    qda = parse_qda(paths["qda"].read_text())
    assert [t for _, _, t in qda] == [t for _, _, t in EXPECTED]
    for (s, e, _), (s0, e0, _) in zip(qda, EXPECTED):
        assert s == pytest.approx(s0, abs=0.051) and e == pytest.approx(e0, abs=0.051)

    back = read_json(paths["json"])
    assert back == _transcript()
    assert json.loads(paths["json"].read_text())["segments"][0]["words"][1]["word"] == " not"


def test_flags_are_shown_not_dropped(tmp_path):
    srt = to_srt(_transcript())
    assert "[flagged: repetition, compression_ratio]" in srt
    vtt = to_vtt(_transcript())
    assert "NOTE [flagged: repetition, compression_ratio]" in vtt
    # A raw "-->" in cue text would end the cue early for a WebVTT parser.
    assert "&lt;cheap&gt; --&gt; now" in vtt
    txt = write_sidecars(_transcript(), tmp_path / "a.wav", formats=["txt"])["txt"].read_text()
    assert "[01:02:12.000 --> 01:02:20.000] Thank you." in txt and "[flagged: repetition" in txt
    qda = write_sidecars(_transcript(), tmp_path / "a.wav", formats=["qda.txt"])["qda"].read_text()
    assert qda.startswith("#00:00:00-0# Ask not")
    assert "#01:02:05-3# Fish" in qda
    assert "\n\n" in qda  # paragraphs are separated by a blank line


def test_srt_clock_format_and_numbering():
    srt = to_srt(_transcript())
    blocks = srt.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["1", "2", "3"]
    assert blocks[1].splitlines()[1] == "01:02:05,250 --> 01:02:11,900"


def test_empty_transcript_writes_valid_empty_files(tmp_path):
    empty = Transcript([], "en", 1.0, 0.0, "tiny.en", "0" * 64)
    paths = write_sidecars(empty, tmp_path / "silent.flac")
    assert paths["vtt"].read_text().startswith("WEBVTT")
    assert parse_srt(paths["srt"].read_text()) == []
    assert read_json(paths["json"]) == empty


def test_rewrite_replaces_whole_file(tmp_path):
    base = tmp_path / "x.wav"
    write_sidecars(_transcript(), base)
    short = Transcript(_transcript().segments[:1], "en", 1.0, 3.0, "tiny.en", "0" * 64)
    paths = write_sidecars(short, base)
    assert parse_srt(paths["srt"].read_text()) == EXPECTED[:1]


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="docx.*srt"):
        write_sidecars(_transcript(), tmp_path / "x.wav", formats=["docx"])
    assert set(FORMATS) == {"srt", "vtt", "txt", "json", "qda.txt"}
