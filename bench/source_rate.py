"""Clipping and clicks in sources recorded at their own rate, repaired as a run extracts them.

``bench/stages.py`` resamples every corpus file to 48 kHz and then plants
its defects; real transfers carry them at the rate they were recorded at.
For every ``--step``-th file of ``speech_clean``, at the file's own rate
(16, 22.05 or 48 kHz):

- declip: 2 % of the samples clipped (full scale at the clip level);
- declick: clicks of 1-4 samples at 5 per second, -12 to -6 dB under the
  file's peak (as ``bench/stages.py`` plants them, but at the source's rate);
- none: the file as it is, for what the repairs do where nothing is wrong.

For declick, the detector itself is also scored at the source's rate, as a
user who names ``--stages declick`` gets it (``Declick().find``, no gate):
detection F1 within +-1 ms at 5 clicks/s (the planted file above) and at 20
clicks/s (planted the same way, same seed), and on the undamaged files its
detections per minute, all of them false.

Each damaged file is written as a 24-bit WAV and extracted the way
``archivox run`` does it (``pipeline.extract_audio`` with the ``auto``
preset, then the stage at 48 kHz as the chain would run it). The SI-SDR of
the 48 kHz result against the undamaged file extracted the same way is
compared, on the same files in the same run, for:

- the damaged audio as extracted, not repaired (the anchor);
- ``48 kHz only``: the stage on the extracted 48 kHz audio: all that ran
  before repairs at the source's rate existed;
- ``archivox``: repairs at the source's rate, then the stage at 48 kHz.

    python bench/source_rate.py --step 1 --out bench/results/source-rate-DATE-HOST.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from signals import RATE_HZ, clicks, clip_to_fraction, corpus_dir, event_f1, si_sdr_db  # noqa: E402

from archivox.config import RestoreOptions, RunOptions  # noqa: E402
from archivox.tasks.declick import Declick  # noqa: E402
from archivox.tasks.declip import Declip  # noqa: E402
from archivox.tasks.pipeline import extract_audio, read_audio  # noqa: E402

DEFECTS = ("declip", "declick")  # and "none": undamaged files, for what the repairs do to them


def damage(clean: np.ndarray, rate_hz: int, defect: str, seed: int,
           clicks_per_s: float = 5.0) -> tuple[np.ndarray, np.ndarray, int]:
    """(clean, damaged, defects planted), both at full scale where the damage peaks, (1, n) at ``rate_hz``."""
    clean, damaged, positions = _damage(clean, rate_hz, defect, seed, clicks_per_s)
    return clean, damaged, len(positions)


def _damage(clean: np.ndarray, rate_hz: int, defect: str, seed: int,
            clicks_per_s: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``damage``, with the planted clicks' sample positions (empty for the other defects)."""
    positions = np.zeros(0, dtype=np.int64)
    if defect == "none":
        damaged = clean
    elif defect == "declip":
        damaged = clip_to_fraction(clean, 0.02)
    else:
        extra, positions = clicks(clean.shape[1] / rate_hz, clicks_per_s, amplitude=0.5 * float(np.abs(clean).max()),
                                  seed=seed, rate_hz=rate_hz)
        damaged = clean + extra
    gain = np.float32(0.999 / np.abs(damaged).max())
    return clean * gain, damaged * gain, positions


def _as_pcm24(audio: np.ndarray) -> np.ndarray:
    """audio (channels, n) rounded to 24-bit PCM, as the bench's damaged WAV stores it. float64"""
    return np.round(np.asarray(audio, dtype=np.float64) * 2.0**23) / 2.0**23


def detection_f1(audio: np.ndarray, rate_hz: int, positions: np.ndarray) -> float:
    """F1 (+-1 ms) of ``Declick().find`` on audio (1, n) at ``rate_hz`` against the planted click positions."""
    regions, _ = Declick().find(_as_pcm24(audio)[0], rate_hz)
    f1, _, _ = event_f1(np.array([start for start, _ in regions]), positions, rate_hz // 1000)
    return f1


def one_case(path: Path, defect: str, seed: int, work: Path) -> dict:
    data, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    clean, damaged, positions = _damage(data.mean(axis=1)[None, :], rate_hz, defect, seed)
    planted = len(positions)
    sf.write(work / "clean.wav", clean[0], rate_hz, subtype="FLOAT")
    sf.write(work / "damaged.wav", damaged[0], rate_hz, subtype="PCM_24")
    options = RunOptions(restore=RestoreOptions(stages=list(DEFECTS)), transcribe_enabled=False)
    extract_audio(work / "clean.wav", work / "reference.wav", options, 0)  # 0: as recorded, no repair
    extract_audio(work / "damaged.wav", work / "plain.wav", options, 0)
    stage = Declip() if defect == "declip" else Declick()
    started = time.perf_counter()
    _, repairs = extract_audio(work / "damaged.wav", work / "extracted.wav", options, rate_hz)
    repaired, _ = read_audio(Path(repairs["path"]) if repairs else work / "extracted.wav")
    if defect != "none" and (not repairs or defect not in {row["stage"] for row in repairs["stages"]}):
        repaired = stage(repaired, RATE_HZ).audio  # the chain runs it at 48 kHz
    seconds = time.perf_counter() - started
    reference, _ = read_audio(work / "reference.wav")
    plain, _ = read_audio(work / "plain.wav")
    started = time.perf_counter()
    only_48k = stage(plain, RATE_HZ)
    seconds_48k = time.perf_counter() - started
    n = min(reference.shape[1], plain.shape[1], repaired.shape[1])
    if defect == "none":
        return {"name": path.name, "rate_hz": rate_hz, "duration_s": clean.shape[1] / rate_hz,
                "repaired_by": sorted(row["stage"] for row in repairs["stages"]) if repairs else [],
                "clicks": sum(row["metrics"].get("found_clicks") or 0 for row in repairs["stages"]) if repairs else 0,
                "sisdr": si_sdr_db(repaired[:, :n], reference[:, :n]) if repairs else float("inf"),
                "seconds": seconds,
                # the detector as a named stage runs it, at the source's rate, with no gate
                "named_clicks": len(Declick().find(_as_pcm24(damaged)[0], rate_hz)[0])}
    f1 = {}
    if defect == "declick":
        f1[5] = detection_f1(damaged, rate_hz, positions)
        _, dense, dense_positions = _damage(data.mean(axis=1)[None, :], rate_hz, defect, seed, clicks_per_s=20.0)
        f1[20] = detection_f1(dense, rate_hz, dense_positions)
    anchor = si_sdr_db(plain[:, :n], reference[:, :n])
    at_source = next((row["metrics"] for row in repairs["stages"] if row["stage"] == defect), {}) if repairs else {}
    found_key = "found_clipped_fraction" if defect == "declip" else "found_clicks"
    return {
        "name": path.name, "defect": defect, "rate_hz": rate_hz, "duration_s": clean.shape[1] / rate_hz,
        "planted": planted,
        "found_48k": only_48k.metrics.get(found_key, 0.0) or 0.0,
        "found_source": at_source.get(found_key, 0.0) or 0.0,
        "gain_48k": si_sdr_db(only_48k.audio[:, :n], reference[:, :n]) - anchor,
        "gain": si_sdr_db(repaired[:, :n], reference[:, :n]) - anchor,
        "seconds": seconds, "seconds_48k": seconds_48k, "f1": f1,
    }


def clean_table(rows: list[dict]) -> list[str]:
    """Undamaged files through the same extraction: what the source-rate repairs do where nothing is wrong."""
    lines = [
        "### undamaged files (the auto preset's look at the source's rate)",
        "",
        "| source rate | files | minutes | files repaired at the source rate (declick / declip) | clicks refilled per minute | SI-SDR of the result against the file as recorded: median / worst (dB) | declick run as named: false detections per minute (count) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for rate in sorted({r["rate_hz"] for r in rows}):
        part = [r for r in rows if r["rate_hz"] == rate]
        touched = [r for r in part if r["repaired_by"]]
        minutes = sum(r["duration_s"] for r in part) / 60
        sisdr = [r["sisdr"] for r in touched]
        lines.append(
            f"| {rate} Hz | {len(part)} | {minutes:.1f} | {sum('declick' in r['repaired_by'] for r in part)} / "
            f"{sum('declip' in r['repaired_by'] for r in part)} | {sum(r['clicks'] for r in part) / minutes:.2f} | "
            + (f"{np.median(sisdr):.1f} / {min(sisdr):.1f}" if sisdr else "(none touched)")
            + f" | {sum(r['named_clicks'] for r in part) / minutes:.2f} ({sum(r['named_clicks'] for r in part)}) |")
    return [*lines, ""]


def table(rows: list[dict], defect: str) -> list[str]:
    what = "clipped samples found (mean %)" if defect == "declip" else "clicks found / planted"
    target = 5.0 if defect == "declip" else 10.0

    def found(part, key) -> str:
        if defect == "declip":
            return f"{100 * np.mean([r[key] for r in part]):.3f}"
        return f"{sum(r[key] for r in part):.0f} / {sum(r['planted'] for r in part)}"

    lines = [
        f"### {defect} (target gain: >= {target:g} dB)",
        "",
        f"| source rate | files | {what}, 48 kHz only | {what}, at the source rate | gain, 48 kHz only: mean / worst | "
        f"gain, archivox: mean / worst | files >= {target:g} dB, 48 kHz only | files >= {target:g} dB, archivox |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]
    if defect == "declick":
        lines[2] += " F1 (+-1 ms) at the source rate, 5 clicks/s: mean / files >= 0.95 | 20 clicks/s: mean / files >= 0.95 |"
        lines[3] += "---|---|"
    groups = [(f"{rate} Hz", [r for r in rows if r["rate_hz"] == rate]) for rate in sorted({r["rate_hz"] for r in rows})]
    for label, part in [*groups, ("all", rows)]:
        at_source = "(the stage at 48 kHz)" if label == f"{RATE_HZ} Hz" else found(part, "found_source")
        lines.append(
            f"| {label} | {len(part)} | {found(part, 'found_48k')} | {at_source} | "
            f"{np.mean([r['gain_48k'] for r in part]):.2f} / {min(r['gain_48k'] for r in part):.2f} | "
            f"{np.mean([r['gain'] for r in part]):.2f} / {min(r['gain'] for r in part):.2f} | "
            f"{sum(r['gain_48k'] >= target for r in part)}/{len(part)} | {sum(r['gain'] >= target for r in part)}/{len(part)} |"
            + "".join(f" {np.mean([r['f1'][k] for r in part]):.3f} / {sum(r['f1'][k] >= 0.95 for r in part)}/{len(part)} |"
                      for k in (5, 20) if defect == "declick"))
    audio_s = sum(r["duration_s"] for r in rows)
    under = ", ".join(f"{r['name']} ({r['gain']:.2f})" for r in rows if r["gain"] < target) or "none"
    lines += [
        "",
        f"Speed over {audio_s:.0f} s: extraction with the repairs at the source's rate and the stage at 48 kHz "
        f"where it still runs, {audio_s / sum(r['seconds'] for r in rows):.1f}x real time; the stage alone at 48 kHz "
        f"{audio_s / sum(r['seconds_48k'] for r in rows):.1f}x.",
        "",
        f"Files under {target:g} dB (archivox): {under}",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=1, help="use every STEP-th speech_clean file")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--defects", default=",".join((*DEFECTS, "none")))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=5, help="file i's clicks are planted with seed SEED + i")
    args = parser.parse_args()
    corpus = corpus_dir()
    if corpus is None:
        raise SystemExit("the shared corpus is not present (../shared/corpus or $ARCHIVOX_CORPUS)")
    files = sorted((corpus / "speech_clean").iterdir())[args.offset :: args.step]
    lines = [
        f"# Defects planted at the source's own rate ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.node()} ({os.cpu_count()} cores, shared), one thread; Python {platform.python_version()}.",
        f"Command: `python bench/source_rate.py --step {args.step} --offset {args.offset} --defects {args.defects}"
        + (f" --seed {args.seed}`" if args.seed != 5 else "`"),
        "",
        f"{len(files)} corpus speech files, damaged at their own rate and extracted as a run does. SI-SDR gain (dB) "
        "over the extracted damaged audio, against the undamaged file extracted the same way.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for defect in [d.strip() for d in args.defects.split(",") if d.strip()]:
            rows = []
            for i, path in enumerate(files):
                rows.append(one_case(path, defect, seed=args.seed + i, work=Path(tmp)))
                outcome = (f"repaired by {rows[-1]['repaired_by']}" if defect == "none" else
                           f"gain {rows[-1]['gain']:.2f} dB (48 kHz only {rows[-1]['gain_48k']:.2f})")
                print(f"[{defect} {i + 1}/{len(files)}] {path.name} {rows[-1]['rate_hz']} Hz {outcome}",
                      file=sys.stderr, flush=True)
            lines += clean_table(rows) if defect == "none" else table(rows, defect)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
