"""Each DSP restoration stage on corpus read speech with defects planted at known places.

For every ``--step``-th file of ``speech_clean`` (resampled to 48 kHz mono):

- dehum: hum at -30 dBFS (50 Hz, 60 Hz, 50 Hz drifting +-1 Hz); the drop of
  the fundamental and harmonics 2-6 (the hum run through the stage's filter
  on its own, which is linear once the analysis is fixed), the speech's SI-SDR
  through the same filter, and whether clean files are left untouched;
- declick: clicks of 1-4 samples, -12 to -6 dB under the file's peak, at 5
  and 20 per second; detection F1 within +-1 ms, SI-SDR gain, and false
  detections per minute on the clean files;
- declip: 2 % of samples clipped; SI-SDR gain;
- loudness: -16 and -23 LUFS with a -1 dBTP ceiling; error and true peak;
- diagnosis: planted hum frequency error (47.5-62.5 Hz), click-rate error;
- speed: x real time of each stage on one minute of 48 kHz mono speech
  (corpus files joined) carrying the stage's defect, one thread;
- lossy-source flag: every ``--lossy-step``-th of those files and two noise
  clips, encoded with ffmpeg (MP3 64/128 kbit/s, AAC 96/128, Opus 32/64,
  Vorbis q1/q3) and decoded back as archivox decodes (48 kHz): how many are
  flagged, split by source (recorded at 44.1/48 kHz or at 16/22.05 kHz);
  and how many lossless originals are flagged, split by provenance (the
  LibriSpeech, LibriVox and LJ Speech audio was cut from LibriVox MP3s before
  it was resampled and stored losslessly, so neither answer is wrong there).

    python bench/stages.py --step 4 --out bench/results/stages-2026-11-21-$(hostname).md
    python bench/stages.py --step 4 --offset 2   # a disjoint set of files
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from signals import (  # noqa: E402
    LOSSY_CODECS, RATE_HZ, clicks, clip_to_fraction, corpus_dir, event_f1, hum, hum_line_db, load_speech,
    lossy_roundtrip, si_sdr_db,
)

from archivox.tasks.declick import Declick  # noqa: E402
from archivox.tasks.declip import Declip  # noqa: E402
from archivox.tasks.dehum import Dehum, remove_hum  # noqa: E402
from archivox.tasks.diagnose import diagnose, lossy_source  # noqa: E402
from archivox.tasks.eq import SpeechEQ  # noqa: E402
from archivox.tasks.loudness import Loudness, integrated_loudness_lufs, true_peak_dbtp  # noqa: E402
from archivox.tasks.dc import DCOffset  # noqa: E402


def dehum_case(speech: np.ndarray, f0: float, drift: float) -> tuple[float, float]:
    duration = speech.shape[1] / RATE_HZ
    planted = hum(f0, duration, level_db=-30.0, drift_hz=drift)
    stage = Dehum()
    analysis = stage.analyse(speech + planted, RATE_HZ)
    if not analysis.found:
        return 0.0, float("nan")
    harmonics = sorted(set(analysis.harmonics) | set(range(1, stage.min_harmonics + 1)))  # as Dehum.repair
    left, _ = remove_hum(planted, RATE_HZ, analysis, harmonics, stage.bandwidth_hz)
    kept, _ = remove_hum(speech, RATE_HZ, analysis, harmonics, stage.bandwidth_hz)
    drops = [hum_line_db(planted, f0, k, drift) - hum_line_db(left, f0, k, drift) for k in range(1, 7)]
    return min(drops), si_sdr_db(kept, speech)


def declick_case(stage: Declick, speech: np.ndarray, rate: float, seed: int) -> tuple[float, float]:
    planted, positions = clicks(speech.shape[1] / RATE_HZ, rate, amplitude=0.5 * float(np.abs(speech).max()), seed=seed)
    noisy = speech + planted
    regions, _ = stage.find(noisy[0].astype(np.float64), RATE_HZ)
    f1, _, _ = event_f1(np.array([s for s, _ in regions]), positions, RATE_HZ // 1000)
    out = stage(noisy).audio
    return f1, si_sdr_db(out, speech) - si_sdr_db(noisy, speech)


# Provenance of the corpus originals, by file-name prefix (SOURCES.md).
_LOSSLESS_PROVENANCE = ("vctk_", "cathy_", "cmu_")  # VCTK, CMU ARCTIC: recorded and shipped as PCM
_MP3_ANCESTRY = ("librispeech_", "librivox_", "ljspeech_")  # cut from LibriVox MP3s, then stored as FLAC/WAV
_LOSSY_NOISE_CLIPS = ("noise/tumult_vinyl5_crackle.wav", "noise/max-audio_typing.wav")


def lossy_flags(corpus: Path, files: list[Path], encode_every: int) -> dict[str, list]:
    """Lossy flag per (file, codec): rows of (name, codec, source rate, flagged, evidence).

    Every original is checked; every ``encode_every``-th, and the noise clips, are also encoded.
    """
    import tempfile

    import soundfile

    from archivox.tasks.extract import decode

    rows: dict[str, list] = {"encoded": [], "original": []}
    sources = [*files, *[corpus / c for c in _LOSSY_NOISE_CLIPS if (corpus / c).is_file()]]
    with tempfile.TemporaryDirectory() as tmp:
        for path in sources:
            rate = soundfile.info(str(path)).samplerate
            flagged, evidence, _, _ = lossy_source(decode(path).astype(np.float64).mean(axis=0), RATE_HZ)
            rows["original"].append((path.name, "original", rate, flagged, evidence))
            if path in files and files.index(path) % encode_every:
                continue
            for codec in LOSSY_CODECS:
                audio = lossy_roundtrip(path, codec, Path(tmp))
                flagged, evidence, _, _ = lossy_source(audio.astype(np.float64).mean(axis=0), RATE_HZ)
                rows["encoded"].append((path.name, codec, rate, flagged, evidence))
    return rows


def speed(stage, audio: np.ndarray) -> float:
    started = time.perf_counter()
    stage(audio, RATE_HZ)
    return (audio.shape[1] / RATE_HZ) / (time.perf_counter() - started)


def pct(values, q) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=4, help="use every STEP-th speech_clean file")
    parser.add_argument("--offset", type=int, default=0, help="starting from this one (0 .. STEP-1)")
    parser.add_argument("--lossy-step", type=int, default=2, help="of those, encode every LOSSY_STEP-th (0: none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="added to the seeds that place the planted clicks; settings are tuned with one seed, "
                             "reported with the default (0)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    corpus = corpus_dir()
    if corpus is None:
        sys.exit("the shared corpus is not present (../shared/corpus or $ARCHIVOX_CORPUS)")
    files = sorted((corpus / "speech_clean").iterdir())[args.offset :: args.step]
    rows: dict[str, list] = {k: [] for k in (
        "hum50", "hum60", "hum50d", "sisdr_hum", "clean_untouched", "clean_hum_found",
        "f1_5", "f1_20", "gain_5", "gain_20", "false", "declip_gain",
        "lufs16", "tp16", "lufs23", "tp23", "diag_hz", "diag_rate")}
    seconds = 0.0
    declick = Declick()
    started = time.time()
    for i, path in enumerate(files):
        speech = load_speech(path)
        duration = speech.shape[1] / RATE_HZ
        seconds += duration
        for key, (f0, drift) in {"hum50": (50.0, 0.0), "hum60": (60.0, 0.0), "hum50d": (50.0, 1.0)}.items():
            drop, sisdr = dehum_case(speech, f0, drift)
            rows[key].append(drop)
            rows["sisdr_hum"].append(sisdr)
        plain = Dehum()(speech)
        rows["clean_hum_found"].append(bool(plain.metrics["found_hum_found"]))
        rows["clean_untouched"].append(bool(np.array_equal(plain.audio, speech)))
        for rate in (5, 20):
            f1, gain = declick_case(declick, speech, rate, seed=args.seed + rate + i)
            rows[f"f1_{rate}"].append(f1)
            rows[f"gain_{rate}"].append(gain)
        rows["false"].append(declick.detect(speech, RATE_HZ)["clicks"])
        clipped = clip_to_fraction(speech, 0.02)
        rows["declip_gain"].append(si_sdr_db(Declip()(clipped).audio, speech) - si_sdr_db(clipped, speech))
        for target in (-16.0, -23.0):
            out = Loudness(target_lufs=target, ceiling_dbtp=-1.0)(speech).audio
            rows[f"lufs{-int(target)}"].append(integrated_loudness_lufs(out, RATE_HZ) - target)
            rows[f"tp{-int(target)}"].append(true_peak_dbtp(out))
        f0 = 47.5 + 15.0 * ((i * 0.37) % 1.0)
        planted, positions = clicks(duration, 3.0, amplitude=0.5 * float(np.abs(speech).max()), seed=args.seed + 100 + i)
        d = diagnose(speech + hum(f0, duration, level_db=-40.0) + planted, RATE_HZ)
        rows["diag_hz"].append(abs(d.hum_fundamental_hz - f0) if d.hum_found else float("inf"))
        true_rate = len(positions) / duration * 60
        rows["diag_rate"].append(abs(d.clicks_per_minute - true_rate) / true_rate)
        print(f"[{i + 1}/{len(files)}] {path.name} {time.time() - started:.0f}s", file=sys.stderr, flush=True)

    # Speed: one minute of 48 kHz mono speech with each stage's defect in it.
    joined = np.concatenate([load_speech(p) for p in files], axis=1)[:, : 60 * RATE_HZ]
    minute = joined.shape[1] / RATE_HZ
    planted, _ = clicks(minute, 10.0, amplitude=0.5 * float(np.abs(joined).max()), seed=1)
    speeds = {
        "dc": speed(DCOffset(), joined + np.float32(0.01)),
        "declick": speed(Declick(), joined + planted),
        "dehum": speed(Dehum(), joined + hum(50.0, minute, drift_hz=1.0)),
        "declip": speed(Declip(), clip_to_fraction(joined, 0.02)),
        "eq": speed(SpeechEQ(), joined),
        "loudness": speed(Loudness(target_lufs=-16.0), joined),
        "diagnose": (minute / _timed(lambda: diagnose(joined + planted, RATE_HZ))),
    }

    lossy = lossy_flags(corpus, files, args.lossy_step) if args.lossy_step else None

    n = len(files)
    minutes = seconds / 60
    hum_real = [f.name for f, found in zip(files, rows["clean_hum_found"]) if found]
    lines = [
        f"# DSP stages on corpus speech with planted defects ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.node()} ({os.cpu_count()} cores, shared with other jobs), one thread; Python {platform.python_version()}.",
        f"Files: every {args.step}th of `speech_clean` from number {args.offset} ({n} files, {minutes:.1f} min), resampled to 48 kHz mono.",
        f"Command: `python bench/stages.py --step {args.step} --offset {args.offset} --lossy-step {args.lossy_step}"
        f"{f' --seed {args.seed}' if args.seed else ''} --out {args.out}`",
        "",
        "| stage | measure | min | 10th pct | median | criterion |",
        "|---|---|---|---|---|---|",
    ]

    def row(stage: str, measure: str, values, criterion: str) -> None:
        lines.append(f"| {stage} | {measure} | {pct(values, 0):.2f} | {pct(values, 10):.2f} | {pct(values, 50):.2f} | {criterion} |")

    row("dehum", "drop of f0 and harmonics 2-6, worst line, 50 Hz (dB)", rows["hum50"], ">= 30")
    row("dehum", "same, 60 Hz (dB)", rows["hum60"], ">= 30")
    row("dehum", "same, 50 Hz drifting +-1 Hz (dB)", rows["hum50d"], ">= 30")
    row("dehum", "speech SI-SDR through the same notches (dB)", rows["sisdr_hum"], "(info)")
    row("declick", "F1 within +-1 ms, 5 clicks/s", rows["f1_5"], ">= 0.95")
    row("declick", "F1 within +-1 ms, 20 clicks/s", rows["f1_20"], ">= 0.95")
    row("declick", "SI-SDR gain, 5 clicks/s (dB)", rows["gain_5"], ">= 10")
    row("declick", "SI-SDR gain, 20 clicks/s (dB)", rows["gain_20"], ">= 10")
    row("declip", "SI-SDR gain, 2 % clipped (dB)", rows["declip_gain"], ">= 5")
    row("loudness", "output - target, -16 LUFS (LU)", rows["lufs16"], "within +-0.5")
    row("loudness", "true peak, -16 LUFS (dBTP)", rows["tp16"], "<= -1")
    row("loudness", "output - target, -23 LUFS (LU)", rows["lufs23"], "within +-0.5")
    row("loudness", "true peak, -23 LUFS (dBTP)", rows["tp23"], "<= -1")
    row("diagnose", "hum frequency error (Hz)", rows["diag_hz"], "< 0.5")
    row("diagnose", "click-rate error (fraction)", rows["diag_rate"], "< 0.2")
    pooled = lambda key, limit: sum(1 for v in rows[key] if v >= limit)  # noqa: E731
    lines += [
        "",
        "Pass counts and pooled figures:",
        "",
        f"- dehum lines >= 30 dB: 50 Hz {pooled('hum50', 30)}/{n}, 60 Hz {pooled('hum60', 30)}/{n}, drifting {pooled('hum50d', 30)}/{n}",
        f"- clean files where dehum found hum: {sum(rows['clean_hum_found'])}/{n} ({', '.join(hum_real) or 'none'}); "
        f"untouched (output == input): {sum(rows['clean_untouched'])}/{n}",
        f"- declick F1 >= 0.95: 5/s {pooled('f1_5', 0.95)}/{n}, 20/s {pooled('f1_20', 0.95)}/{n}; mean F1 5/s {np.mean(rows['f1_5']):.3f}, 20/s {np.mean(rows['f1_20']):.3f}",
        f"- declick SI-SDR gain >= 10 dB: 5/s {pooled('gain_5', 10)}/{n}, 20/s {pooled('gain_20', 10)}/{n}",
        f"- declick false detections on clean speech: {sum(rows['false'])} in {minutes:.1f} min = {sum(rows['false']) / minutes:.2f} per minute (criterion <= 1)",
        f"- declip gain >= 5 dB: {pooled('declip_gain', 5)}/{n}",
        f"- files under a declick or declip criterion: {under_criteria(files, rows) or 'none'}",
        f"- loudness within 0.5 LU and true peak <= -1 dBTP: -16 LUFS {sum(1 for e, t in zip(rows['lufs16'], rows['tp16']) if abs(e) <= 0.5 and t <= -1 + 1e-6)}/{n}, "
        f"-23 LUFS {sum(1 for e, t in zip(rows['lufs23'], rows['tp23']) if abs(e) <= 0.5 and t <= -1 + 1e-6)}/{n}",
        f"- diagnosis hum within 0.5 Hz: {sum(1 for v in rows['diag_hz'] if v < 0.5)}/{n}; click rate within 20 %: {sum(1 for v in rows['diag_rate'] if v < 0.2)}/{n}",
        *(lossy_lines(lossy) if lossy else []),
        "",
        f"Speed, x real time on {minute:.0f} s of 48 kHz mono speech with the stage's defect, one thread:",
        "",
        "| stage | x real time |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in speeds.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def under_criteria(files: list[Path], rows: dict[str, list]) -> str:
    """Each file that misses a declick or declip criterion, with the figures it missed."""
    limits = {"f1_5": 0.95, "f1_20": 0.95, "gain_5": 10.0, "gain_20": 10.0, "declip_gain": 5.0}
    out = []
    for i, path in enumerate(files):
        missed = [f"{key} {rows[key][i]:.2f}" for key, limit in limits.items() if rows[key][i] < limit]
        if rows["false"][i]:
            missed.append(f"false {rows['false'][i]}")
        if any(not m.startswith("false") for m in missed):
            out.append(f"{path.name} ({', '.join(missed)})")
    return "; ".join(out)


def lossy_lines(lossy: dict[str, list]) -> list[str]:
    """The lossy-flag results as Markdown: a table by codec and source band, then the originals."""
    def count(rows) -> str:
        return f"{sum(r[3] for r in rows)}/{len(rows)}" if rows else "-"

    encoded = lossy["encoded"]
    full = lambda r: r[2] >= 32_000  # noqa: E731  (recorded at 32 kHz or more: the encoder's cut shows)
    lines = [
        "",
        f"Lossy-source flag on ffmpeg-encoded files ({len(encoded) // len(LOSSY_CODECS)} sources: "
        f"{len([r for r in encoded if full(r)]) // len(LOSSY_CODECS)} recorded at 44.1/48 kHz, the rest at 16/22.05 kHz), "
        "flagged / encoded:",
        "",
        "| codec | sources at 44.1/48 kHz | sources at 16/22.05 kHz | all |",
        "|---|---|---|---|",
    ]
    for codec in LOSSY_CODECS:
        rows = [r for r in encoded if r[1] == codec]
        lines.append(f"| {codec} | {count([r for r in rows if full(r)])} | {count([r for r in rows if not full(r)])} | {count(rows)} |")
    lines.append(f"| all | {count([r for r in encoded if full(r)])} | {count([r for r in encoded if not full(r)])} | {count(encoded)} |")
    originals = lossy["original"]
    clean = [r for r in originals if r[0].startswith(_LOSSLESS_PROVENANCE)]
    ancestry = [r for r in originals if r[0].startswith(_MP3_ANCESTRY)]
    other = [r for r in originals if not r[0].startswith(_LOSSLESS_PROVENANCE + _MP3_ANCESTRY)]
    flagged = lambda rows: ", ".join(f"{r[0]} ({r[4]})" for r in rows if r[3]) or "none"  # noqa: E731
    lines += [
        "",
        f"- false positives on lossless originals (VCTK, CMU ARCTIC): {count(clean)} flagged: {flagged(clean)}",
        f"- originals with LibriVox-MP3 ancestry (LibriSpeech, LibriVox, LJ Speech; resampled after decoding): "
        f"{count(ancestry)} flagged: {flagged(ancestry)}",
        f"- noise clips of unstated provenance: {count(other)} flagged: {flagged(other)}",
        f"- encoded files missed: {', '.join(f'{r[0]} {r[1]}' for r in encoded if not r[3] and full(r)) or 'none'} "
        "(44.1/48 kHz sources; the 16/22.05 kHz ones are in the table)",
    ]
    return lines


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
