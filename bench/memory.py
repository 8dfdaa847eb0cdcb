"""Peak memory of one item's restoration, whole-file against block by block, by the item's length.

Builds an item of the given lengths from corpus read speech (or a speech-like
signal when the corpus is absent) with hum, clicks and hiss planted, and runs
the pipeline's extract and restore steps on it in a fresh process per case,
reporting the process's peak resident memory and the wall time. The
whole-file case is the block engine switched off (``long_s`` above the
item's length); the block case turns it on for anything over one block.

    python bench/memory.py --minutes 4,16 --out bench/results/memory-2026-11-21-$(hostname).md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

RATE_HZ = 48_000


def build_item(path: Path, minutes: float) -> str:
    """Write a mono 48 kHz FLAC of ``minutes``; returns where its speech came from."""
    import numpy as np
    import soundfile as sf

    from signals import clicks, corpus_dir, hum, load_speech, speech_like, white_noise

    corpus = corpus_dir()
    files = sorted((corpus / "speech_clean").glob("*")) if corpus else []
    total = int(minutes * 60 * RATE_HZ)
    with sf.SoundFile(str(path), "w", RATE_HZ, 1, subtype="PCM_24", format="FLAC") as out:
        written, index = 0, 0
        while written < total:
            if files:
                speech = load_speech(files[index % len(files)])[0]
            else:
                speech = speech_like(8.0, seed=index)[0]
            speech = speech[: total - written]
            seconds = speech.size / RATE_HZ
            noisy = (speech + hum(50.0, seconds, level_db=-35.0)[0, : speech.size]
                     + white_noise(seconds, -50.0, seed=index)[0, : speech.size]
                     + clicks(seconds, 3.0, 0.3, seed=index)[0][0, : speech.size])
            out.write(np.clip(noisy, -1, 1).astype(np.float32))
            written += speech.size
            index += 1
    return f"{len(files)} corpus utterances, cycled" if files else "speech-like signal (no corpus)"


def measure(source: Path, work: Path, blocks: bool, stages: str) -> dict:
    """Run extract + restore in a child process; returns its peak RSS and times."""
    code = f"""
import json, resource, time
from pathlib import Path
from archivox.config import RestoreOptions, RunOptions
from archivox.manifest import ManifestItem
from archivox.tasks import pipeline
options = RunOptions(restore=RestoreOptions(stages={stages.split(",")!r}, long_s={120.0 if blocks else 1e7!r}),
                     transcribe_enabled=False, device="cpu")
work = Path({str(work)!r})
plan = pipeline.prepare(ManifestItem(item_id="item", path={source.name!r}, row=1), run_id="bench",
    root=Path({str(source.parent)!r}), out=work / "out", work_root=work / "work", previous=None,
    previous_failure=None, failures_by_sha={{}}, options=options, config_hash=options.config_hash(), models="", force=False)
started = time.perf_counter()
extracted = pipeline.extract(plan, options)
extract_s = time.perf_counter() - started
rss_extract = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
restored = pipeline.restore(plan, extracted, options)
print(json.dumps({{"extract_s": extract_s, "restore_s": time.perf_counter() - started,
    "rss_after_extract_kib": rss_extract, "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "blocks": max(s["metrics"].get("blocks", 1) for s in restored["stages"])}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", default="4,16", help="comma-separated item lengths")
    ap.add_argument("--stages", default="declip,dc,declick,dehum,denoise,eq,loudness")
    ap.add_argument("--out", help="write the Markdown table here")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="archivox-bench-memory-") as tmp:
        for minutes in [float(m) for m in args.minutes.split(",")]:
            source = Path(tmp) / f"item_{minutes:g}min.flac"
            origin = build_item(source, minutes)
            for blocks in (False, True):
                result = measure(source, Path(tmp) / f"{minutes:g}-{blocks}", blocks, args.stages)
                rows.append((minutes, "blocks of 120 s" if blocks else "whole file", result))
                print(minutes, blocks, result, flush=True)

    lines = [
        f"# Peak memory of extract + restore, whole file against blocks ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}, CPU only.",
        f"Command: `python bench/memory.py --minutes {args.minutes}`",
        f"Item: mono 48 kHz FLAC from {origin}, with 50 Hz hum, hiss and 3 clicks/s; stages {args.stages}.",
        "Peak RSS of a fresh process running `pipeline.extract` then `pipeline.restore` (torch and the models included).",
        "",
        "| item (min) | mode | peak RSS after extract (MiB) | peak RSS (MiB) | extract (s) | restore (s) | blocks |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for minutes, mode, r in rows:
        if "error" in r:
            lines.append(f"| {minutes:g} | {mode} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {minutes:g} | {mode} | {r['rss_after_extract_kib'] / 1024:.0f} | {r['rss_peak_kib'] / 1024:.0f} | "
            f"{r['extract_s']:.1f} | {r['restore_s']:.1f} | {r['blocks']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
