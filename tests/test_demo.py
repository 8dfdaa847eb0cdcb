"""The offline example archive and the espeak-ng synthesis it is built from.

Everything here runs the real espeak-ng library, the real ffmpeg and PyAV.
"""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest

from archivox.demo import DISTINCTIVE_PHRASE, DemoArchive, build_example_archive
from archivox.errors import ConfigError, ManifestError, MediaError
from archivox.fsutil import resolve_inside
from archivox.manifest import read_manifest
from archivox.tasks.extract import decode, probe, speech_band_energy
from archivox.tts import SynthesisError, synthesize
from signals import rms_db, tone_prominence_db


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> DemoArchive:
    return build_example_archive(tmp_path_factory.mktemp("demo") / "archive", seed=0)


def _ok_items(archive: DemoArchive):
    return [i for i in archive.items if i.expected_status == "ok"]


# --- synthesis ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "language, text",
    [
        ("en", "The harbour lights were shining over the old grain silos."),
        ("de", "Im Sommer fuhren wir mit dem Fahrrad an den See."),
    ],
)
def test_synthesis_gives_speech_of_plausible_length(language, text):
    rate_hz = 16_000
    audio = synthesize(text, language=language, rate_hz=rate_hz, words_per_minute=150)
    assert audio.dtype == np.float32 and audio.ndim == 1
    duration_s = audio.size / rate_hz
    words = len(text.split())
    # 150 words per minute is 0.4 s a word; allow for pauses and espeak's own pacing.
    assert 0.5 * words * 0.4 < duration_s < 2.0 * words * 0.4, duration_s
    assert rms_db(audio) > -30.0
    assert np.max(np.abs(audio)) <= 1.0
    # Voiced speech: most energy in the speech band, not hiss or DC.
    band = speech_band_energy(audio[None, :], rate_hz)[0]
    assert 10 * np.log10(band / np.mean(audio.astype(np.float64) ** 2)) > -6.0


def test_synthesis_languages_rates_and_speed_differ_as_asked():
    text = "Guten Morgen, wie geht es Ihnen heute?"
    german = synthesize(text, language="de", rate_hz=22_050)
    english = synthesize(text, language="en", rate_hz=22_050)
    assert not np.array_equal(german[: english.size], english[: german.size])
    # Resampling keeps the duration.
    at_48k = synthesize(text, language="de", rate_hz=48_000)
    assert abs(at_48k.size / 48_000 - german.size / 22_050) < 0.01
    # Faster speech is shorter.
    fast = synthesize(text, language="de", rate_hz=22_050, words_per_minute=300)
    assert fast.size < 0.75 * german.size


def test_synthesis_is_reproducible_within_a_process():
    text = "My father worked at the docks for thirty years."
    first = synthesize(text, rate_hz=16_000)
    synthesize("Something else in between.", language="de")
    assert np.array_equal(first, synthesize(text, rate_hz=16_000))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(text="x", language="zz"), "no language 'zz'"),
        (dict(text="x", voice_variant="nope"), "no voice variant 'nope'"),
        (dict(text="x", language="../en"), "may contain only"),
        (dict(text="x", words_per_minute=20), "[80, 450]"),
        (dict(text="x", rate_hz=100), "rate_hz=100"),
        (dict(text="   "), "non-empty"),
    ],
)
def test_synthesis_refuses_bad_settings_with_the_reason(kwargs, fragment):
    with pytest.raises(SynthesisError) as caught:
        synthesize(**kwargs)
    assert fragment in str(caught.value)


# --- the archive ----------------------------------------------------------------------------


def test_archive_holds_every_kind_of_item(archive):
    files = {p.relative_to(archive.root).as_posix() for p in archive.root.rglob("*") if p.is_file()}
    suffixes = {Path(f).suffix for f in files}
    assert {".wav", ".flac", ".mp4", ".csv"} <= suffixes
    assert ".mp3" in suffixes or ".ogg" in suffixes
    assert (archive.root / "broken/empty.wav").stat().st_size == 0
    assert 0 < (archive.root / "broken/truncated.flac").stat().st_size <= 300
    assert (archive.root / "broken/truncated.flac").read_bytes()[:4] == b"fLaC"
    hostile = [f for f in files if f.startswith("odd names/-rf ")]
    assert len(hostile) == 1 and "'" in hostile[0] and not hostile[0].isascii()
    assert archive.outside_file.is_file() and archive.outside_file.parent == archive.root.parent
    # Every file in the archive is in the manifest, and every manifest row but one is a file inside it.
    assert files - {"manifest.csv"} == {i.path for i in archive.items if not i.path.startswith("../")}


def test_manifest_rows_match_the_items(archive):
    with open(archive.manifest, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"path", "item_id", "collection", "language", "title", "year"} <= set(rows[0])
    assert [r["path"] for r in rows] == [i.path for i in archive.items]
    assert any(not r["item_id"] for r in rows) and any(r["item_id"] for r in rows)
    assert {r["language"] for r in rows} >= {"en", "de"}
    # archivox's own reader accepts it: unique ids (derived where blank), metadata kept.
    items = read_manifest(archive.manifest)
    assert len({i.item_id for i in items}) == len(rows)
    assert all(not i.error for i in items)
    assert all("year" in i.metadata or not r["year"] for i, r in zip(items, rows))
    outside = [r for r in rows if r["path"].startswith("../")]
    assert len(outside) == 1
    with pytest.raises(ManifestError, match="outside the archive root"):
        resolve_inside(archive.root, outside[0]["path"])
    # ...while the file it names is perfectly good audio: only the root check can stop it.
    assert probe(archive.outside_file).duration_s > 1.0


def test_good_files_decode_as_described(archive):
    for item in _ok_items(archive):
        path = archive.root / item.path
        info = probe(path)
        assert info.channels == item.channels, item.path
        assert info.sample_rate_hz == item.sample_rate_hz, item.path
        audio = decode(path, rate_hz=16_000)
        assert audio.shape[0] == item.channels
        # Lossy codecs pad the start and end by some tens of milliseconds.
        assert abs(audio.shape[1] / 16_000 - item.duration_s) < 0.1, item.path
        assert rms_db(audio) > -30.0, item.path
    total_s = sum(i.duration_s for i in _ok_items(archive))
    assert 20.0 < total_s < 60.0


def test_video_item_has_a_video_and_an_audio_stream(archive):
    path = archive.root / "film/newsreel_1949.mp4"
    with av.open(str(path)) as container:
        kinds = sorted(s.type for s in container.streams)
        video = container.streams.video[0]
        assert kinds == ["audio", "video"]
        assert container.streams.audio[0].codec_context.name == "aac"
        assert (video.codec_context.width, video.codec_context.height) == (160, 120)
        frames = sum(1 for _ in container.decode(video=0))
    # 5 frames a second for as long as the speech.
    assert abs(frames - 5 * archive.item("film/newsreel_1949.mp4").duration_s) <= 2


def test_broken_files_do_not_decode(archive):
    for relative in ("broken/empty.wav", "broken/truncated.flac"):
        assert archive.item(relative).expected_status == "failed"
        with pytest.raises(MediaError):
            decode(archive.root / relative, rate_hz=16_000)


def test_planted_defects_are_measurable(archive):
    smith = decode(archive.root / "interviews/smith_1962.wav", rate_hz=44_100)
    left_db, right_db = 10 * np.log10(speech_band_energy(smith, 44_100))
    assert left_db - right_db > 20.0  # speech on the left only
    assert tone_prominence_db(smith[0], 44_100, 50.0) > 20.0
    assert tone_prominence_db(smith[1], 44_100, 50.0) < 6.0

    mueller = decode(archive.root / "interviews/mueller_1971.flac", rate_hz=48_000)[0]
    assert tone_prominence_db(mueller, 48_000, 60.0) > 20.0
    assert tone_prominence_db(mueller, 48_000, 50.0) < 6.0
    # Clicks: sample-to-sample jumps that speech at 48 kHz never makes.
    jumps = np.flatnonzero(np.abs(np.diff(mueller)) > 0.25)
    separate = np.count_nonzero(np.diff(jumps) > 48) + 1 if jumps.size else 0
    duration_s = mueller.size / 48_000
    assert 1.0 * duration_s < separate < 6.0 * duration_s

    # The speech in the stereo interview contains the phrase a search test looks for.
    assert DISTINCTIVE_PHRASE in archive.item("interviews/smith_1962.wav").text.lower()


def test_same_seed_gives_the_same_bytes(archive, tmp_path):
    again = build_example_archive(tmp_path / "again", seed=0)
    other = build_example_archive(tmp_path / "other", seed=1)
    for item in _ok_items(archive):
        assert (again.root / item.path).read_bytes() == (archive.root / item.path).read_bytes(), item.path
    # The seed drives the planted noise, so another seed gives other bytes.
    for relative in ("interviews/smith_1962.wav", "interviews/mueller_1971.flac"):
        assert (other.root / relative).read_bytes() != (archive.root / relative).read_bytes(), relative
    assert again.manifest.read_bytes() == archive.manifest.read_bytes()


def test_duration_scale_and_destination_checks(tmp_path):
    short = build_example_archive(tmp_path / "short", duration_scale=0.5)
    smith = short.item("interviews/smith_1962.wav")
    assert smith.text.count(".") == 1 and smith.duration_s < 8.0
    with pytest.raises(ConfigError, match="not an empty folder"):
        build_example_archive(tmp_path / "short")
    with pytest.raises(ConfigError, match=r"duration_scale=0.0 is outside"):
        build_example_archive(tmp_path / "zero", duration_scale=0.0)
