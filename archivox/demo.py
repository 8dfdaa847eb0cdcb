"""A small example archive, built offline, to try archivox on without real data.

Speech is synthesised with espeak-ng (:mod:`archivox.tts`) in English and
German, then degraded the way old collections are: mains hum, broadband
noise, clicks, one-sided stereo. The archive also holds what a real
collection throws at the pipeline: a video, lossy and lossless formats, an
empty file, a truncated file, a hostile file name and a manifest row that
points outside the archive root.

Everything is deterministic for a given ``seed``. Audio arrays here are
float32 shaped ``(channels, samples)``.
"""

from __future__ import annotations

import csv
import functools
import math
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archivox.errors import ConfigError, MediaError

MIN_DURATION_SCALE = 0.1
MAX_DURATION_SCALE = 20.0
MANIFEST_COLUMNS = ("path", "item_id", "collection", "language", "title", "year", "notes")
# The row that must be refused by the archive-root check; the file exists, beside the root.
OUTSIDE_ROW_PATH = "../outside.wav"
SPEECH_LEVEL_DB = -20.0  # RMS of the speech, dBFS
LEAD_IN_S = 0.6  # room tone before and after the speech, as on a real tape

# A phrase distinctive enough that a search for it finds exactly one item.
DISTINCTIVE_PHRASE = "the harbour lights were shining over the old grain silos"


@dataclass(frozen=True)
class DemoItem:
    """One manifest row of the example archive and what a run should make of it.

    ``path`` is the manifest path (relative to the root, POSIX separators).
    ``text`` is what was spoken ("" for files without speech).
    ``expected_status`` is "ok" or "failed". ``defect`` names what was planted,
    as ``+``-joined tags such as ``hum_50hz+noise+speech_left_only``.
    ``duration_s``, ``sample_rate_hz`` and ``channels`` describe the audio as
    written (0 for files that do not decode).
    """

    path: str
    item_id: str
    language: str
    text: str
    expected_status: str
    defect: str
    duration_s: float = 0.0
    sample_rate_hz: int = 0
    channels: int = 0


@dataclass(frozen=True)
class DemoArchive:
    """The built archive. ``outside_file`` is the file the ``../`` row points at."""

    root: Path
    manifest: Path
    items: list[DemoItem]
    outside_file: Path

    def item(self, path: str) -> DemoItem:
        for item in self.items:
            if item.path == path:
                return item
        raise KeyError(f"no demo item with path {path!r}; paths: {', '.join(i.path for i in self.items)}")


# --- degradations ---------------------------------------------------------------------------


def _db(level_db: float) -> float:
    return 10.0 ** (level_db / 20.0)


def _hum(fundamental_hz: float, n: int, rate_hz: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mains hum with 5 harmonics falling 5 dB each, random phases, RMS ``level_db``. Shape (n,)."""
    t = np.arange(n) / rate_hz
    out = np.zeros(n)
    for k in range(1, 6):
        if k * fundamental_hz < rate_hz / 2:
            out += _db(-5.0 * (k - 1)) * np.sin(2 * np.pi * k * fundamental_hz * t + rng.uniform(0, 2 * np.pi))
    return (out * _db(level_db) / np.sqrt(np.mean(out**2))).astype(np.float32)


def _noise(n: int, rate_hz: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Tape-like broadband noise: white, with the top octave rolled off. RMS ``level_db``. Shape (n,)."""
    from scipy.signal import butter, sosfilt

    white = rng.standard_normal(n + 2048)
    sos = butter(2, min(0.45 * rate_hz, 9000.0), btype="lowpass", fs=rate_hz, output="sos")
    shaped = sosfilt(sos, white)[2048:]  # drop the filter's start-up
    return (shaped * _db(level_db) / np.sqrt(np.mean(shaped**2))).astype(np.float32)


def _clicks(n: int, rate_hz: int, per_s: float, rng: np.random.Generator) -> np.ndarray:
    """Scratches and dust: 1-6 sample spikes of 0.3-0.8 full scale, ``per_s`` on average. Shape (n,)."""
    out = np.zeros(n, dtype=np.float32)
    count = max(1, int(round(per_s * n / rate_hz)))
    margin = int(0.05 * rate_hz)
    for position in np.sort(rng.choice(np.arange(margin, n - margin), size=count, replace=False)):
        width = int(rng.integers(1, 7))
        out[position : position + width] = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.8)
    return out


# --- speech ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    path: str
    item_id: str
    collection: str
    language: str
    title: str
    year: str
    sentences: tuple[str, ...]


def _spoken_text(sentences: tuple[str, ...], duration_scale: float) -> str:
    """Scale the length by the number of sentences, so every recording stays whole speech."""
    count = max(1, int(round(len(sentences) * duration_scale)))
    return " ".join(sentences[i % len(sentences)] for i in range(count))


def _speech(text: str, language: str, rate_hz: int, seed: int) -> np.ndarray:
    """Synthesised speech at SPEECH_LEVEL_DB RMS with LEAD_IN_S of silence each side. Shape (n,)."""
    from archivox.tts import synthesize

    voice = synthesize(text, language=language, rate_hz=rate_hz, words_per_minute=140, seed=seed)
    voice = voice * (_db(SPEECH_LEVEL_DB) / max(float(np.sqrt(np.mean(voice**2))), 1e-9))
    pad = np.zeros(int(LEAD_IN_S * rate_hz), dtype=np.float32)
    return np.concatenate([pad, voice.astype(np.float32), pad])


def _limit(audio: np.ndarray) -> np.ndarray:
    # Clicks on top of speech can pass full scale; clip like an old A/D converter would.
    return np.clip(audio, -0.999, 0.999).astype(np.float32)


# --- encoding -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _encoders(exe: str) -> frozenset[str]:
    proc = subprocess.run([exe, "-hide_banner", "-nostdin", "-encoders"], capture_output=True, text=True, timeout=60)
    names = set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS":
            names.add(parts[1])
    return frozenset(names)


def _ffmpeg(args: list[str]) -> None:
    from archivox.tasks.extract import ffmpeg_exe

    # bitexact: no encoder version string in the output, so the same seed gives the same bytes.
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-fflags", "+bitexact", *args]
    proc = subprocess.run(command, capture_output=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg failed building the example archive: {proc.stderr.decode('utf-8', 'replace')[-1500:]}")


def _lossy_codec() -> tuple[str, list[str]]:
    """(suffix, ffmpeg codec args) for the radio item: MP3 where the ffmpeg build can encode it."""
    from archivox.tasks.extract import ffmpeg_exe

    encoders = _encoders(ffmpeg_exe())
    if "libmp3lame" in encoders:
        return ".mp3", ["-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0", "-id3v2_version", "0"]
    if "libvorbis" in encoders:
        return ".ogg", ["-c:a", "libvorbis", "-q:a", "3"]
    raise ConfigError(f"the ffmpeg at {ffmpeg_exe()} has neither an MP3 nor a Vorbis encoder; install a full ffmpeg build")


def _video_codec() -> list[str]:
    from archivox.tasks.extract import ffmpeg_exe

    if "libx264" in _encoders(ffmpeg_exe()):
        return ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "stillimage", "-pix_fmt", "yuv420p", "-threads", "1"]
    return ["-c:v", "mpeg4", "-q:v", "10", "-threads", "1"]


def _write_wav(path: Path, audio: np.ndarray, rate_hz: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, rate_hz, subtype="PCM_16", format="WAV")


def _write_flac(path: Path, audio: np.ndarray, rate_hz: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, rate_hz, subtype="PCM_16", format="FLAC")


# --- the archive ----------------------------------------------------------------------------


def build_example_archive(dest: Path, seed: int = 0, duration_scale: float = 1.0) -> DemoArchive:
    """Write the example archive into ``dest`` (created; must be absent or empty) and return it.

    ``dest`` becomes the archive root with ``manifest.csv`` in it; one file,
    ``outside.wav``, is written beside ``dest`` so that the manifest's
    ``../outside.wav`` row names a real file that only the root check can
    refuse. ``duration_scale`` scales how many sentences each recording holds
    (at least one); at 1.0 the archive holds about 45 s of audio.
    """
    if not MIN_DURATION_SCALE <= duration_scale <= MAX_DURATION_SCALE:
        raise ConfigError(f"duration_scale={duration_scale} is outside [{MIN_DURATION_SCALE}, {MAX_DURATION_SCALE}]")
    root = Path(dest)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} exists and is not an empty folder; give a new folder for the example archive")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def child_rng() -> np.random.Generator:
        # One generator per item, drawn in a fixed order, so items do not shift each other.
        return np.random.default_rng(rng.integers(2**63))

    lossy_suffix, lossy_args = _lossy_codec()
    specs = {
        "smith": _Spec(
            "interviews/smith_1962.wav", "smith-1962", "oral-history", "en", "Interview with J. Smith", "1962",
            ("When I was a boy, the harbour lights were shining over the old grain silos.",
             "My father worked at the docks for thirty years."),
        ),
        "mueller": _Spec(
            "interviews/mueller_1971.flac", "", "oral-history", "de", "Gespräch mit A. Müller", "1971",
            ("Im Sommer fuhren wir mit dem Fahrrad an den See.",
             "Meine Großmutter backte jeden Sonntag einen Apfelkuchen."),
        ),
        "radio": _Spec(
            f"radio/broadcast_1958{lossy_suffix}", "radio-1958", "radio", "en", "Evening news bulletin", "1958",
            ("Good evening. Here is the weather forecast for the coast.",
             "Heavy rain is expected in the north by Thursday morning."),
        ),
        "film": _Spec(
            "film/newsreel_1949.mp4", "", "film", "en", "Newsreel: the new bridge", "1949",
            ("The new bridge across the river was opened by the mayor today.",
             "Hundreds of people came to watch the ceremony."),
        ),
        "odd": _Spec(
            unicodedata.normalize("NFC", "odd names/-rf ünïcode 'quoted'.wav"), "", "misc", "en",
            "A file with a hostile name", "1980",
            ("This recording has an unusual file name.",),
        ),
    }
    items: list[DemoItem] = []
    manifest_rows: list[dict[str, str]] = []

    def record(spec: _Spec, text: str, status: str, defect: str, duration_s: float, rate_hz: int, channels: int, notes: str = "") -> None:
        items.append(DemoItem(spec.path, spec.item_id, spec.language, text, status, defect, round(duration_s, 3), rate_hz, channels))
        manifest_rows.append({"path": spec.path, "item_id": spec.item_id, "collection": spec.collection,
                              "language": spec.language, "title": spec.title, "year": spec.year, "notes": notes})

    with tempfile.TemporaryDirectory(prefix="archivox-demo-") as scratch_dir:
        scratch = Path(scratch_dir)

        # Stereo field recording: the interviewee's microphone on the left, the right
        # channel picked up nothing but the recorder's own noise.
        spec, r, rate = specs["smith"], child_rng(), 44_100
        text = _spoken_text(spec.sentences, duration_scale)
        speech = _speech(text, "en", rate, seed)
        n = speech.size
        left = speech + _hum(50.0, n, rate, -32.0, r) + _noise(n, rate, -46.0, r)
        right = _noise(n, rate, -46.0, r)
        _write_wav(root / spec.path, _limit(np.stack([left, right])), rate)
        record(spec, text, "ok", "hum_50hz+noise+speech_left_only", n / rate, rate, 2, "speech on the left channel only")

        spec, r, rate = specs["mueller"], child_rng(), 48_000
        text = _spoken_text(spec.sentences, duration_scale)
        speech = _speech(text, "de", rate, seed)
        n = speech.size
        mono = speech + _hum(60.0, n, rate, -30.0, r) + _clicks(n, rate, 3.0, r)
        _write_flac(root / spec.path, _limit(mono[None, :]), rate)
        record(spec, text, "ok", "hum_60hz+clicks", n / rate, rate, 1)

        spec, r, rate = specs["radio"], child_rng(), 22_050
        text = _spoken_text(spec.sentences, duration_scale)
        speech = _speech(text, "en", rate, seed)
        n = speech.size
        _write_wav(scratch / "radio.wav", _limit((speech + _noise(n, rate, -36.0, r))[None, :]), rate)
        (root / spec.path).parent.mkdir(parents=True, exist_ok=True)
        _ffmpeg(["-i", f"file:{scratch / 'radio.wav'}", "-map_metadata", "-1", "-flags:a", "+bitexact",
                 *lossy_args, f"file:{root / spec.path}"])
        record(spec, text, "ok", "noise+lossy_codec", n / rate, rate, 1)

        spec, r, rate = specs["film"], child_rng(), 48_000
        text = _spoken_text(spec.sentences, duration_scale)
        speech = _speech(text, "en", rate, seed)
        n = speech.size
        _write_wav(scratch / "film.wav", _limit((speech + _clicks(n, rate, 4.0, r) + _noise(n, rate, -55.0, r))[None, :]), rate)
        (root / spec.path).parent.mkdir(parents=True, exist_ok=True)
        duration_s = n / rate
        _ffmpeg(["-f", "lavfi", "-i", f"testsrc=size=160x120:rate=5:duration={duration_s:.3f}",
                 "-i", f"file:{scratch / 'film.wav'}", "-map", "0:v:0", "-map", "1:a:0",
                 "-map_metadata", "-1", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
                 *_video_codec(), "-c:a", "aac", "-b:a", "64k", "-shortest", f"file:{root / spec.path}"])
        record(spec, text, "ok", "clicks+video_container", duration_s, rate, 1)

        # The hostile name is only ever handled as a Path here; archivox must do the same.
        spec, r, rate = specs["odd"], child_rng(), 16_000
        text = _spoken_text(spec.sentences, duration_scale)
        speech = _speech(text, "en", rate, seed)
        n = speech.size
        _write_wav(root / spec.path, _limit((speech + _noise(n, rate, -50.0, r))[None, :]), rate)
        record(spec, text, "ok", "hostile_file_name", n / rate, rate, 1)

        empty = _Spec("broken/empty.wav", "broken-empty", "misc", "", "An empty file", "", ())
        (root / empty.path).parent.mkdir(parents=True, exist_ok=True)
        (root / empty.path).write_bytes(b"")
        record(empty, "", "failed", "empty_file", 0.0, 0, 0)

        # A transfer that stopped early: a real FLAC header, then nothing.
        truncated = _Spec("broken/truncated.flac", "", "misc", "en", "A truncated transfer", "1965", ())
        _write_flac(scratch / "whole.flac", _speech("This file was cut short.", "en", 48_000, seed)[None, :], 48_000)
        (root / truncated.path).write_bytes((scratch / "whole.flac").read_bytes()[:300])
        record(truncated, "", "failed", "truncated_file", 0.0, 0, 0)

        # Valid audio, but outside the root: only the manifest path check may stop it.
        outside = _Spec(OUTSIDE_ROW_PATH, "outside-root", "misc", "en", "A row pointing outside the archive", "1970", ())
        outside_file = (root / OUTSIDE_ROW_PATH).resolve()
        r, rate = child_rng(), 16_000
        speech = _speech("This file is outside the archive.", "en", rate, seed)
        _write_wav(outside_file, _limit((speech + _noise(speech.size, rate, -60.0, r))[None, :]), rate)
        record(outside, "", "failed", "path_outside_root", 0.0, 0, 0)

    manifest = root / "manifest.csv"
    with open(manifest, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest_rows)
    return DemoArchive(root=root, manifest=manifest, items=items, outside_file=outside_file)


def total_audio_s(archive: DemoArchive) -> float:
    """Seconds of decodable audio in the archive (what a run has to process)."""
    return float(math.fsum(i.duration_s for i in archive.items if i.expected_status == "ok"))
