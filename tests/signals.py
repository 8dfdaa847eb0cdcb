"""Test dummies: small synthetic signals and where the corpus lives.

Every test that needs a made-up signal takes it from here, so that the
generators are written once. Signals are float32 (channels, samples).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

RATE_HZ = 48_000
REPO_ROOT = Path(__file__).resolve().parents[1]


def corpus_dir() -> Path | None:
    """The shared corpus, or None when this checkout has none beside it."""
    path = Path(os.environ.get("ARCHIVOX_CORPUS", REPO_ROOT.parent / "shared" / "corpus"))
    return path if (path / "manifest.csv").is_file() else None


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def seconds(duration_s: float, rate_hz: int = RATE_HZ) -> np.ndarray:
    return np.arange(int(round(duration_s * rate_hz))) / rate_hz


def tone(freq_hz: float, duration_s: float, level_db: float = -20.0, rate_hz: int = RATE_HZ) -> np.ndarray:
    t = seconds(duration_s, rate_hz)
    return (10 ** (level_db / 20) * np.sqrt(2) * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)[None, :]


def hum(fundamental_hz: float, duration_s: float, level_db: float = -30.0, harmonics: int = 6,
        drift_hz: float = 0.0, rate_hz: int = RATE_HZ) -> np.ndarray:
    """Mains hum: a fundamental and harmonics with falling level; optional slow drift (±drift_hz)."""
    t = seconds(duration_s, rate_hz)
    inst = fundamental_hz + drift_hz * np.sin(2 * np.pi * 0.1 * t)
    phase = 2 * np.pi * np.cumsum(inst) / rate_hz
    out = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        out += (0.6 ** (k - 1)) * np.sin(k * phase + 0.3 * k)
    out *= 10 ** (level_db / 20) / np.sqrt(np.mean(out ** 2))
    return out.astype(np.float32)[None, :]


def white_noise(duration_s: float, level_db: float = -40.0, seed: int = 0, rate_hz: int = RATE_HZ) -> np.ndarray:
    return (10 ** (level_db / 20) * rng(seed).standard_normal(int(round(duration_s * rate_hz)))).astype(np.float32)[None, :]


def speech_like(duration_s: float, level_db: float = -23.0, seed: int = 0, rate_hz: int = RATE_HZ) -> np.ndarray:
    """A voiced-speech stand-in: harmonic bursts (syllables) with a moving pitch and pauses."""
    r = rng(seed)
    t = seconds(duration_s, rate_hz)
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate_hz
    voiced = sum((1.0 / k) * np.sin(k * phase) for k in range(1, 25))
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t + r.uniform(0, 6)), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.25 * t) > -0.6).astype(float)
    out = voiced * syllables * pauses + 0.02 * r.standard_normal(t.size) * syllables
    out *= 10 ** (level_db / 20) / max(np.sqrt(np.mean(out ** 2)), 1e-9)
    return out.astype(np.float32)[None, :]


def clicks(duration_s: float, rate_per_s: float, amplitude: float = 0.5, seed: int = 0,
           rate_hz: int = RATE_HZ) -> tuple[np.ndarray, np.ndarray]:
    """Impulses of 1-4 samples at random places. Returns (signal, click sample indices)."""
    r = rng(seed)
    n = int(round(duration_s * rate_hz))
    count = int(round(duration_s * rate_per_s))
    positions = np.sort(r.choice(np.arange(100, n - 100), size=count, replace=False))
    out = np.zeros(n, dtype=np.float32)
    for p in positions:
        width = r.integers(1, 5)
        out[p:p + width] = amplitude * r.choice([-1.0, 1.0]) * r.uniform(0.5, 1.0)
    return out[None, :], positions


def rms_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.asarray(audio, dtype=np.float64) ** 2)) + 1e-20))


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR of estimate against reference, in dB."""
    est = np.asarray(estimate, dtype=np.float64).ravel()
    ref = np.asarray(reference, dtype=np.float64).ravel()
    n = min(est.size, ref.size)
    est, ref = est[:n] - est[:n].mean(), ref[:n] - ref[:n].mean()
    target = (est @ ref) / (ref @ ref + 1e-20) * ref
    return float(10 * np.log10((target @ target + 1e-20) / ((est - target) @ (est - target) + 1e-20)))


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Word-level Levenshtein distance / reference words, after lower-casing and dropping punctuation.

    A light stand-in for jiwer (a bench-only dependency) so tests can judge transcripts.
    """
    import re

    def norm(s: str) -> list[str]:
        return re.sub(r"[^a-z0-9' ]+", " ", s.lower().replace("-", " ")).split()

    from archivox.tasks.transcribe import word_edits

    hyp, ref = norm(hypothesis), norm(reference)
    if not ref:
        return float(len(hyp) > 0)
    return word_edits(ref, hyp) / len(ref)


def tone_prominence_db(audio: np.ndarray, rate_hz: int, freq_hz: float, resolution_hz: float = 2.0) -> float:
    """How far a spectral line at ``freq_hz`` stands above the median of the 20 Hz around it, in dB.

    ``audio``: (samples,) or (channels, samples), channels are averaged. ~0 dB
    means no tone there; mains hum well above the noise shows 20 dB or more.
    """
    from scipy.signal import welch

    mono = np.asarray(audio, dtype=np.float64).reshape(-1, np.shape(audio)[-1]).mean(axis=0)
    freqs, power = welch(mono, fs=rate_hz, nperseg=int(rate_hz / resolution_hz))
    line = power[np.argmin(np.abs(freqs - freq_hz))]
    around = power[(np.abs(freqs - freq_hz) > 3 * resolution_hz) & (np.abs(freqs - freq_hz) < 10 + 3 * resolution_hz)]
    return float(10 * np.log10((line + 1e-30) / (np.median(around) + 1e-30)))


ARCHIVE_SENTENCES = (
    "the committee met on tuesday to discuss the harbour",
    "my grandmother worked at the mill for forty years",
    "we walked to school along the river every morning",
    "the bakery on the corner opened before dawn",
    "after the war the village built a new church",
    "the train to the city left at seven o'clock",
    "in winter the lake froze and we skated for hours",
    "my father repaired radios in the back room",
)


def speech_archive(dest: Path, n_items: int, seed: int = 0, noise_db: float = -45.0,
                   sentences: int = 1, rate_hz: int = 16_000) -> Path:
    """A folder of ``n_items`` synthetic speech WAVs (mono, ``rate_hz``) plus ``manifest.csv``; returns the manifest.

    Item ``i`` speaks ``sentences`` different sentences, from sentence ``i``
    on (cycled), over white noise at ``noise_db`` dBFS, so items differ in
    content and bytes. Item ids are ``item-000``... and files
    ``tape-000.wav``...

    The sentences differ within an item because one sentence said over and
    over trips Whisper's compression-ratio rule: every window is decoded
    again by sampling at each fallback temperature, about 14 times the cost
    of ordinary speech, which is not what an archive's throughput is.
    """
    import csv

    import soundfile as sf

    from archivox.tts import synthesize

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "item_id", "collection", "language"])
        for i in range(n_items):
            text = ". ".join(ARCHIVE_SENTENCES[(i + k) % len(ARCHIVE_SENTENCES)] for k in range(sentences))
            voice = synthesize(text, "en", rate_hz=rate_hz, seed=seed + i)
            audio = 0.3 * voice / (np.max(np.abs(voice)) + 1e-9)
            audio = audio + white_noise(len(audio) / rate_hz, noise_db, seed=seed + i, rate_hz=rate_hz)[0, : len(audio)]
            sf.write(dest / f"tape-{i:03d}.wav", audio.astype(np.float32), rate_hz, subtype="PCM_16")
            writer.writerow([f"tape-{i:03d}.wav", f"item-{i:03d}", "oral-history", "en"])
    return dest / "manifest.csv"


def load_speech(path: Path | str, rate_hz: int = RATE_HZ) -> np.ndarray:
    """A corpus file as mono float32 (1, samples) at ``rate_hz`` (polyphase resampling)."""
    import soundfile
    from scipy import signal as _signal

    data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    g = np.gcd(int(rate), int(rate_hz))
    return _signal.resample_poly(mono, rate_hz // g, int(rate) // g).astype(np.float32)[None, :]


def clip_to_fraction(audio: np.ndarray, fraction: float) -> np.ndarray:
    """Hard-clip symmetrically at the level that ``fraction`` of the samples exceed."""
    level = float(np.quantile(np.abs(audio), 1.0 - fraction))
    return np.clip(audio, -level, level).astype(np.float32)


def event_f1(found: np.ndarray, truth: np.ndarray, tolerance: int) -> tuple[float, float, float]:
    """(F1, precision, recall) of event positions, each true event matched to at most one found within ``tolerance``."""
    found = np.sort(np.asarray(found, dtype=np.int64))
    used = np.zeros(found.size, dtype=bool)
    hits = 0
    for t in np.asarray(truth, dtype=np.int64):
        if found.size == 0:
            break
        distance = np.abs(found - t).astype(float)
        distance[used] = np.inf
        j = int(np.argmin(distance))
        if distance[j] <= tolerance:
            used[j] = True
            hits += 1
    precision = hits / max(found.size, 1)
    recall = hits / max(len(truth), 1)
    return 2 * precision * recall / max(precision + recall, 1e-12), precision, recall


def hum_line_db(audio: np.ndarray, fundamental_hz: float, harmonic: int, drift_hz: float = 0.0,
                rate_hz: int = RATE_HZ) -> float:
    """Level (dB) of one harmonic of a ``hum()`` tone, by coherent projection along hum()'s own phase track."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    t = np.arange(x.size) / rate_hz
    phase = 2 * np.pi * np.cumsum(fundamental_hz + drift_hz * np.sin(2 * np.pi * 0.1 * t)) / rate_hz
    return float(20 * np.log10(2 * np.abs(np.mean(x * np.exp(-1j * harmonic * phase))) + 1e-20))


# Lossy encoders at usual settings, as ffmpeg output arguments by name; the
# name's first part is the codec (and picks the container in ``lossy_roundtrip``).
LOSSY_CODECS = {
    "mp3_64k": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "mp3_128k": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "aac_96k": ["-c:a", "aac", "-b:a", "96k"],
    "aac_128k": ["-c:a", "aac", "-b:a", "128k"],
    "opus_32k": ["-c:a", "libopus", "-b:a", "32k"],
    "opus_64k": ["-c:a", "libopus", "-b:a", "64k"],
    "vorbis_q1": ["-c:a", "libvorbis", "-q:a", "1"],
    "vorbis_q3": ["-c:a", "libvorbis", "-q:a", "3"],
}
_LOSSY_SUFFIX = {"mp3": ".mp3", "aac": ".m4a", "opus": ".ogg", "vorbis": ".ogg", "flac": ".flac"}


def lossy_roundtrip(source: Path, codec: str, workdir: Path, extra_args: tuple[str, ...] = ()) -> np.ndarray:
    """Encode a media file with ffmpeg (``LOSSY_CODECS[codec]``, or "flac") and decode it back as
    archivox does (float32 (channels, samples) at 48 kHz); the encoded file is left in ``workdir``."""
    import subprocess

    from archivox.tasks.extract import decode, ffmpeg_exe

    args = ["-c:a", "flac"] if codec == "flac" else LOSSY_CODECS[codec]
    encoded = Path(workdir) / f"{Path(source).stem}.{codec}{_LOSSY_SUFFIX[codec.split('_')[0]]}"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
                    *extra_args, *args, str(encoded)], check=True, timeout=120)
    return decode(encoded)


def click_pairs(duration_s: float, pairs_per_s: float, gap_samples: tuple[int, int] = (6, 14),
                amplitude: float = 0.5, seed: int = 0, rate_hz: int = RATE_HZ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of 1-3 sample impulses a few samples apart (``gap_samples`` range, start to start), as
    scratches and crackle make. Returns (signal (1, n), sample indices of every impulse (2 * pairs,))."""
    r = rng(seed)
    n = int(round(duration_s * rate_hz))
    count = int(round(duration_s * pairs_per_s))
    firsts = np.sort(r.choice(np.arange(100, n - 100 - gap_samples[1]), size=count, replace=False))
    out = np.zeros(n, dtype=np.float32)
    positions = []
    for p in firsts:
        for q in (int(p), int(p) + int(r.integers(gap_samples[0], gap_samples[1] + 1))):
            width = int(r.integers(1, 4))
            out[q:q + width] = amplitude * r.choice([-1.0, 1.0]) * r.uniform(0.5, 1.0)
            positions.append(q)
    return out[None, :], np.array(positions)


def _one_per_stretch(n: int, count: int, r: np.random.Generator) -> np.ndarray:
    """``count`` sample positions in [0, n), one in the second quarter of each of ``count`` equal stretches."""
    stretch = n // count
    return np.array([i * stretch + int(r.integers(stretch // 4, stretch // 2)) for i in range(count)])


def plosive_onsets(duration_s: float, per_s: float, amplitude: float, decay_s: float = 0.02, seed: int = 0,
                   rate_hz: int = RATE_HZ) -> tuple[np.ndarray, np.ndarray]:
    """Plosive-like bursts: a sharp step (one sample) that stays and decays over ``decay_s``, with 30 %
    low-passed (3 kHz) roughness, one in each 1/``per_s`` stretch. Returns (signal (1, n), onset sample
    indices)."""
    from scipy import signal as _signal

    r = rng(seed)
    n = int(round(duration_s * rate_hz))
    positions = _one_per_stretch(n, int(round(duration_s * per_s)), r)
    out = np.zeros(n)
    k = np.arange(int(5 * decay_s * rate_hz))
    b, a = _signal.butter(2, 3000 / (rate_hz / 2))
    for p in positions:
        rough = _signal.lfilter(b, a, r.standard_normal(k.size))
        burst = np.exp(-k / (decay_s * rate_hz)) * (1 + 0.3 * rough / rough.std())
        m = min(k.size, n - p)
        out[p:p + m] += amplitude * r.choice([-1.0, 1.0]) * burst[:m]
    return out.astype(np.float32)[None, :], positions


def bright_voice(duration_s: float, f0_hz: float = 180.0, level_db: float = -23.0, seed: int = 0,
                 rate_hz: int = RATE_HZ) -> np.ndarray:
    """A voice whose harmonics (1/sqrt(k), random phases) reach 0.45 x ``rate_hz``, with vibrato and a slow
    swell, (1, n) float32. Full-band at 16 kHz like the bright LibriVox recordings, whose clipped runs are
    mostly one or two samples long."""
    r = rng(seed)
    t = seconds(duration_s, rate_hz)
    phase = 2 * np.pi * np.cumsum(f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))) / rate_hz
    out = sum(k ** -0.5 * np.cos(k * phase + r.uniform(0, 2 * np.pi)) for k in range(1, int(0.45 * rate_hz / f0_hz)))
    out = out * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    out *= 10 ** (level_db / 20) / max(np.sqrt(np.mean(out ** 2)), 1e-9)
    return out.astype(np.float32)[None, :]


def noise_bursts(duration_s: float, per_s: float, amplitude: float, decay_s: float = 0.01, seed: int = 0,
                 rate_hz: int = RATE_HZ) -> tuple[np.ndarray, np.ndarray]:
    """Plosive releases as a full-band recording shows them: a one-sample spike of ``amplitude`` followed by
    white noise (0.3 x ``amplitude`` RMS) decaying over ``decay_s``, one in each 1/``per_s`` stretch.
    Returns (signal (1, n), burst start sample indices)."""
    r = rng(seed)
    n = int(round(duration_s * rate_hz))
    positions = _one_per_stretch(n, int(round(duration_s * per_s)), r)
    out = np.zeros(n)
    k = np.arange(int(4 * decay_s * rate_hz))
    for p in positions:
        burst = 0.3 * r.standard_normal(k.size) * np.exp(-k / (decay_s * rate_hz))
        burst[0] = r.choice([-1.0, 1.0])
        m = min(k.size, n - p)
        out[p:p + m] += amplitude * burst[:m]
    return out.astype(np.float32)[None, :], positions


def fricative_onsets(duration_s: float, per_s: float, amplitude: float, noise_db: float = -6.0,
                     length_s: float = 0.08, band_hz: tuple[float, float] = (2000.0, 8000.0), seed: int = 0,
                     rate_hz: int = RATE_HZ) -> tuple[np.ndarray, np.ndarray]:
    """Stop releases into frication as a full-band recording shows them: a one-sample spike of ``amplitude``
    followed by ``length_s`` of band-passed noise (``band_hz``) whose RMS is ``noise_db`` re ``amplitude``,
    one in each 1/``per_s`` stretch. Returns (signal (1, n), onset sample indices)."""
    from scipy import signal as _signal

    r = rng(seed)
    n = int(round(duration_s * rate_hz))
    positions = _one_per_stretch(n, int(round(duration_s * per_s)), r)
    b, a = _signal.butter(4, [band_hz[0] / (rate_hz / 2), band_hz[1] / (rate_hz / 2)], btype="band")
    k = int(length_s * rate_hz)
    out = np.zeros(n)
    for p in positions:
        m = min(k, n - p)
        noise = _signal.lfilter(b, a, r.standard_normal(m + 2000))[2000:]  # past the filter's start-up
        out[p:p + m] += amplitude * 10 ** (noise_db / 20) * noise / noise.std()
        out[p] += amplitude * r.choice([-1.0, 1.0])
    return out.astype(np.float32)[None, :], positions


def after_closures(voice: np.ndarray, events: np.ndarray, positions: np.ndarray, level: float, seed: int = 0,
                   rate_hz: int = RATE_HZ) -> np.ndarray:
    """``voice`` (1, n) silenced from 30 ms before to 100 ms after each of ``positions`` (a stop's closure, then
    the release in place of the voice), plus ``events`` (1, n) and a floor 60 dB under ``level``. (1, n) float64."""
    gate = np.ones(voice.shape[1])
    for p in positions:
        gate[max(0, p - int(0.03 * rate_hz)) : p + int(0.1 * rate_hz)] = 0.0
    floor = 1e-3 * level * np.random.default_rng(seed).standard_normal(voice.shape)
    return voice * gate + events + floor
