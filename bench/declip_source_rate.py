"""Declipping a source recorded at another rate than 48 kHz, as a run extracts it.

For every ``--step``-th file of ``speech_clean``, at the file's own rate
(16, 22.05, 44.1 or 48 kHz): 2 % of the samples are clipped, the result is
written as a 24-bit WAV and extracted the way ``archivox run`` does it
(``pipeline.extract_audio``, then the declip stage at 48 kHz). The SI-SDR of
the 48 kHz audio against the unclipped file (resampled the same way) is
compared for three treatments, on the same files in the same run:

- ``clipped``: the audio as extracted, not repaired (the anchor);
- ``at 48 kHz only``: the declip stage on the extracted 48 kHz audio, which is
  all that ran before the source-rate path existed;
- ``archivox``: the source-rate declip, then the stage at 48 kHz as a run
  does (it finds nothing left, or repairs what remains).

    python bench/declip_source_rate.py --step 1 --out bench/results/declip-source-rate-DATE-HOST.md
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

from signals import RATE_HZ, clip_to_fraction, corpus_dir, si_sdr_db  # noqa: E402

from archivox.config import RestoreOptions, RunOptions  # noqa: E402
from archivox.tasks.declip import Declip  # noqa: E402
from archivox.tasks.pipeline import extract_audio, read_audio  # noqa: E402


def one_file(path: Path, work: Path, options: RunOptions) -> dict:
    data, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    clean = data.mean(axis=1)[None, :]
    clipped = clip_to_fraction(clean, 0.02)
    # Full scale at the clip level, as a converter clips; the reference gets the same gain.
    gain = np.float32(0.999 / np.abs(clipped).max())
    sf.write(work / "clean.wav", (clean * gain)[0], rate_hz, subtype="FLOAT")
    sf.write(work / "clipped.wav", (clipped * gain)[0], rate_hz, subtype="PCM_24")
    extract_audio(work / "clean.wav", work / "reference.wav", options, 0)  # 0: no declip
    extract_audio(work / "clipped.wav", work / "plain.wav", options, 0)
    started = time.perf_counter()
    _, declip = extract_audio(work / "clipped.wav", work / "extracted.wav", options, rate_hz)
    reference, _ = read_audio(work / "reference.wav")
    plain, _ = read_audio(work / "plain.wav")
    repaired, _ = read_audio(Path(declip["path"]) if declip else work / "extracted.wav")
    repaired = Declip()(repaired, RATE_HZ).audio
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    only_48k = Declip()(plain, RATE_HZ)
    seconds_48k = time.perf_counter() - started
    n = min(reference.shape[1], plain.shape[1], repaired.shape[1])
    anchor = si_sdr_db(plain[:, :n], reference[:, :n])
    return {
        "name": path.name, "rate_hz": rate_hz, "duration_s": clean.shape[1] / rate_hz,
        "found_48k": only_48k.metrics["found_clipped_fraction"],
        "found_source": declip["metrics"]["clipped_fraction"] if declip else 0.0,
        "gain_48k": si_sdr_db(only_48k.audio[:, :n], reference[:, :n]) - anchor,
        "gain": si_sdr_db(repaired[:, :n], reference[:, :n]) - anchor,
        "seconds": seconds, "seconds_48k": seconds_48k,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=1, help="use every STEP-th speech_clean file")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    corpus = corpus_dir()
    if corpus is None:
        raise SystemExit("the shared corpus is not present (../shared/corpus or $ARCHIVOX_CORPUS)")
    files = sorted((corpus / "speech_clean").iterdir())[args.offset :: args.step]
    options = RunOptions(restore=RestoreOptions(stages=["declip"]), transcribe_enabled=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(files):
            rows.append(one_file(path, Path(tmp), options))
            print(f"[{i + 1}/{len(files)}] {path.name} {rows[-1]['rate_hz']} Hz gain {rows[-1]['gain']:.2f} dB "
                  f"(48 kHz only {rows[-1]['gain_48k']:.2f})", file=sys.stderr, flush=True)
    lines = [
        f"# Declipping sources recorded at their own rate ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.node()} ({os.cpu_count()} cores, shared), one thread; Python {platform.python_version()}.",
        f"Command: `python bench/declip_source_rate.py --step {args.step} --offset {args.offset}`",
        "",
        f"{len(rows)} corpus speech files, 2 % of samples clipped at the file's own rate, extracted as a run does. "
        "SI-SDR gain (dB) over the extracted clipped audio, against the unclipped file extracted the same way.",
        "",
        "| source rate | files | found at 48 kHz (mean % of samples) | found at source rate | gain, stage at 48 kHz only: mean / worst | gain, archivox: mean / worst | files >= 5 dB (archivox) |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for rate in sorted({r["rate_hz"] for r in rows}):
        part = [r for r in rows if r["rate_hz"] == rate]
        found_at_source = ("(the stage at 48 kHz)" if rate == RATE_HZ
                           else f"{100 * np.mean([r['found_source'] for r in part]):.3f}")
        lines.append(
            f"| {rate} Hz | {len(part)} | {100 * np.mean([r['found_48k'] for r in part]):.3f} | "
            f"{found_at_source} | "
            f"{np.mean([r['gain_48k'] for r in part]):.2f} / {min(r['gain_48k'] for r in part):.2f} | "
            f"{np.mean([r['gain'] for r in part]):.2f} / {min(r['gain'] for r in part):.2f} | "
            f"{sum(r['gain'] >= 5.0 for r in part)}/{len(part)} |")
    audio_s = sum(r["duration_s"] for r in rows)
    lines += [
        f"| all | {len(rows)} | | | {np.mean([r['gain_48k'] for r in rows]):.2f} / {min(r['gain_48k'] for r in rows):.2f} | "
        f"{np.mean([r['gain'] for r in rows]):.2f} / {min(r['gain'] for r in rows):.2f} | "
        f"{sum(r['gain'] >= 5.0 for r in rows)}/{len(rows)} |",
        "",
        f"Speed over {audio_s:.0f} s of audio: the source-rate path (decode at the source rate, declip, resample, "
        f"the stage at 48 kHz) {audio_s / sum(r['seconds'] for r in rows):.1f}x real time; "
        f"the stage at 48 kHz alone {audio_s / sum(r['seconds_48k'] for r in rows):.1f}x.",
        "",
        "Files under 5 dB (archivox): " + (", ".join(f"{r['name']} ({r['gain']:.2f})" for r in rows if r["gain"] < 5.0) or "none"),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
