"""Long recordings in bounded memory: the chain run block by block from disk.

Run whole, the chain holds an item in memory many times over: each stage's
working arrays are 10-35x the audio, so a 3-hour interview would need tens of
GB. Here the item is read from its work WAV one block at a time and the
results are written as they come, so memory depends on ``block_s``, not on the
item's length.

- Every block is processed with ``context_s`` of audio on each side, so that
  filters, predictors and the denoiser's recurrent state see what they would
  see in the whole file; only the block's own span is kept.
- Neighbouring blocks are cross-faded over ``crossfade_s`` in the middle of
  that shared context. Detectors decide per block (a hum that starts at
  minute 40 is removed from minute 40), and where two blocks decide a little
  differently the cross-fade leaves no step.
- Loudness needs the whole item. The chain before it is written to a work
  file while a streaming BS.1770 meter measures it; then gain and the
  true-peak limiter run over that file block by block, repeated until the
  output meets the target, as the whole-file stage does.
- Stage metrics are merged over blocks (counts add up, levels are averaged
  by duration, peaks take the maximum) and say how many blocks there were.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from archivox.tasks.chain import Chain, StageRecord, check_range
from archivox.tasks.loudness import LoudnessMeter, true_peak_envelope

from archivox.fsutil import atomic_path

Writer = Callable[[np.ndarray], None]  # takes (channels, samples) float32, in order


@dataclass(frozen=True)
class BlockOptions:
    """How a long item is cut into blocks. ``long_s``: items longer than this run block by block."""

    block_s: float = 120.0
    context_s: float = 3.0
    crossfade_s: float = 1.0
    long_s: float = 300.0

    def __post_init__(self) -> None:
        check_range("block_s", self.block_s, 10.0, 3600.0)
        check_range("context_s", self.context_s, 0.5, 60.0)
        # The fade sits in the middle of the context, away from the edges
        # where a block's own processing is least like the whole file's.
        check_range("crossfade_s", self.crossfade_s, 0.01, self.context_s)
        check_range("long_s", self.long_s, self.block_s, 1e7)

    def is_long(self, samples: int, rate_hz: int) -> bool:
        return samples > self.long_s * rate_hz


def block_spans(samples: int, block_n: int) -> list[tuple[int, int]]:
    """Cut ``samples`` into about ``block_n``-long spans of near-equal length (no runt at the end)."""
    count = max(1, round(samples / block_n))
    edges = np.linspace(0, samples, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


class _Stitcher:
    """Joins per-block outputs, cross-fading each block into the next.

    Block k emits [start_k - half, end_k + half) (clipped to the item); two
    neighbours overlap on [start_k - half, start_k + half), where the earlier
    block fades out linearly and the later one fades in. The two are nearly
    the same signal, so equal-gain (linear) fades keep the level.
    """

    def __init__(self, write: Writer, fade_n: int):
        self.write = write
        self.fade_n = fade_n
        self.pending: np.ndarray | None = None

    def add(self, emitted: np.ndarray, last: bool) -> None:
        rest = emitted
        if self.pending is not None:
            ramp = (np.arange(self.fade_n, dtype=np.float32) + 0.5) / self.fade_n
            self.write(self.pending * (1.0 - ramp) + rest[:, : self.fade_n] * ramp)
            rest = rest[:, self.fade_n :]
        if last:
            self.write(rest)
            self.pending = None
        else:
            self.write(rest[:, : rest.shape[1] - self.fade_n])
            self.pending = rest[:, rest.shape[1] - self.fade_n :].copy()


# -- merging per-block metrics ---------------------------------------------------

_MAX_KEYS = ("peak", "reduction", "_max")
_SUM_KEYS = ("seconds", "samples", "clicks", "count")


def merge_block_metrics(per_block: Sequence[tuple[dict[str, Any], float, float]]) -> dict[str, Any]:
    """One stage's metrics over all blocks.

    ``per_block`` holds (metrics, the block's own duration, the duration the
    stage saw including context), in seconds. Flags are true if any block's
    is; counts and durations add up, scaled to the block's own span since the
    context is seen twice; peaks and reductions take the maximum; rates and
    levels are averaged by duration; lists are joined without repeats; text
    keeps the first non-empty value.
    """
    keys = list(dict.fromkeys(k for metrics, _, _ in per_block for k in metrics))
    merged: dict[str, Any] = {}
    for key in keys:
        values = [(m[key], own, seen) for m, own, seen in per_block if key in m and m[key] is not None]
        if not values:
            merged[key] = None
            continue
        first = values[0][0]
        is_max = any(s in key for s in _MAX_KEYS)
        is_sum = "per_" not in key and any(s in key for s in _SUM_KEYS)
        if isinstance(first, (bool, np.bool_)):
            merged[key] = bool(any(v for v, _, _ in values))
        elif isinstance(first, (int, float, np.integer, np.floating)):
            numbers = [(float(v), own, seen) for v, own, seen in values if math.isfinite(float(v))]
            if not numbers:
                merged[key] = float(first)
            elif is_max:
                merged[key] = max(v for v, _, _ in numbers)
            elif is_sum or isinstance(first, (int, np.integer)):
                total = sum(v * own / max(seen, 1e-9) for v, own, seen in numbers)
                merged[key] = int(round(total)) if isinstance(first, (int, np.integer)) else total
            else:
                weight = sum(own for _, own, _ in numbers) or 1.0
                merged[key] = sum(v * own for v, own, _ in numbers) / weight
        elif isinstance(first, list):
            joined: list[Any] = []
            for v, _, _ in values:
                for element in v:
                    if element not in joined:
                        joined.append(element)
            merged[key] = joined
        elif isinstance(first, str):
            merged[key] = next((v for v, _, _ in values if v), "")
        else:
            merged[key] = first
    merged["blocks"] = len(per_block)
    return merged


# -- the block-by-block chain ----------------------------------------------------


@dataclass
class LongformResult:
    records: list[StageRecord]
    written: dict[str, Path]


def run_chain_from_file(
    chain: Chain,
    source: Path,
    destination: Path,
    work_dir: Path,
    *,
    keep_before: dict[str, Path] | None = None,
    residual: tuple[str, Path] | None = None,
    options: BlockOptions = BlockOptions(),
) -> LongformResult:
    """Run ``chain`` over the audio file ``source`` block by block; write 24-bit FLAC to ``destination``.

    ``keep_before``: stage name -> float WAV path for the audio as it entered
    that stage (e.g. ``{"denoise": work/"pre_denoise.wav"}``). ``residual``:
    (stage name, FLAC path) for the input minus the audio as it entered that
    stage: what the stages before it took away. Every file is written
    atomically. Stages after ``loudness`` are not supported (none exist).
    """
    keep_before = {k: v for k, v in (keep_before or {}).items() if k in chain.names}
    names = chain.names
    loud_at = names.index("loudness") if "loudness" in names else None
    block_stages = chain.stages[:loud_at] if loud_at is not None else chain.stages
    info = sf.info(str(source))
    rate_hz, channels, total_n = info.samplerate, info.channels, info.frames
    block_n = int(options.block_s * rate_hz)
    context_n = int(options.context_s * rate_hz)
    fade_n = max(2, int(options.crossfade_s * rate_hz) // 2 * 2)
    half = fade_n // 2
    spans = block_spans(total_n, block_n)
    work_dir.mkdir(parents=True, exist_ok=True)

    with _Sinks() as sinks:
        body_path = work_dir / "chain_body.wav" if loud_at is not None else destination
        body = sinks.open(body_path, rate_hz, channels, flac=loud_at is None)
        meter = LoudnessMeter(rate_hz, channels) if loud_at is not None else None

        def write_body(piece: np.ndarray) -> None:
            body.write(piece)
            if meter is not None:
                meter.add(piece)

        stitchers = {"__body__": _Stitcher(write_body, fade_n)}
        for stage_name, path in keep_before.items():
            stitchers[stage_name] = _Stitcher(sinks.open(path, rate_hz, channels).write, fade_n)
        # The residual is taken where the named stage starts, or after the
        # last block stage when the chain has no such stage.
        residual_at = None
        if residual is not None:
            residual_at = residual[0] if residual[0] in names else ("loudness" if loud_at is not None else "__end__")
            stitchers["__residual__"] = _Stitcher(sinks.open(residual[1], rate_hz, channels, flac=True).write, fade_n)

        per_stage: list[list[tuple[dict[str, Any], float, float]]] = [[] for _ in block_stages]
        seconds = [0.0] * len(block_stages)
        for k, ((start, end), (window, w0)) in enumerate(zip(spans, read_windows(source, spans, context_n))):
            last = k == len(spans) - 1
            # What this block emits: its span plus half a fade each side (none at the item's ends).
            emitted = slice(0 if k == 0 else start - half - w0, (total_n if last else end + half) - w0)

            def emit(name: str, audio: np.ndarray, window=window, emitted=emitted, last=last) -> None:
                if name in stitchers:
                    stitchers[name].add(audio[:, emitted], last)
                if name == residual_at:
                    stitchers["__residual__"].add(window[:, emitted] - audio[:, emitted], last)

            audio = window
            for i, stage in enumerate(block_stages):
                emit(stage.name, audio)
                started = time.perf_counter()
                out = stage(audio, rate_hz)
                seconds[i] += time.perf_counter() - started
                per_stage[i].append((out.metrics, (end - start) / rate_hz, window.shape[1] / rate_hz))
                audio = out.audio
            emit("loudness" if loud_at is not None else "__end__", audio)
            stitchers["__body__"].add(audio[:, emitted], last)
        records = [
            StageRecord(stage=s.name, position=i, params=s.params(), metrics=merge_block_metrics(per_stage[i]),
                        seconds=seconds[i], device=s.device)
            for i, s in enumerate(block_stages)
        ]
        sinks.close_all()
    written: dict[str, Path] = {"restored": destination, **keep_before}
    if residual is not None:
        written["residual"] = residual[1]

    if loud_at is not None:
        stage = chain.stages[loud_at]
        started = time.perf_counter()
        metrics = _loudness_from_file(stage, body_path, destination, work_dir, meter.integrated_lufs(),
                                      spans, context_n)
        records.append(StageRecord(stage=stage.name, position=loud_at, params=stage.params(), metrics=metrics,
                                   seconds=time.perf_counter() - started, device=stage.device))
        body_path.unlink(missing_ok=True)
    return LongformResult(records=records, written=written)


def _loudness_from_file(stage, source: Path, destination: Path, work_dir: Path, input_lufs: float,
                        spans: list[tuple[int, int]], context_n: int) -> dict[str, Any]:
    """The loudness stage over a file: fixed gain plus limiter per block, repeated until on target."""
    info = sf.info(str(source))
    rate_hz, channels = info.samplerate, info.channels
    metrics: dict[str, Any] = {"found_loudness_lufs": input_lufs, "blocks": len(spans)}
    staged = work_dir / "loudness_pass.wav"

    def one_pass(gain_db: float) -> tuple[float, float, float]:
        """Write gain + limiter to ``staged``; returns (output LUFS, output true peak dBTP, max reduction dB)."""
        meter = LoudnessMeter(rate_hz, channels)
        peak = 0.0
        reduction = 0.0
        with _Sinks() as sinks:
            out = sinks.open(staged, rate_hz, channels)
            for (start, end), (block, w0) in zip(spans, read_windows(source, spans, context_n)):
                core = slice(start - w0, end - w0)
                limited, r = stage.gain_and_limit(block, rate_hz, gain_db)
                piece = limited[:, core]
                out.write(piece)
                meter.add(piece)
                peak = max(peak, float(true_peak_envelope(limited)[core].max(initial=0.0)))
                reduction = max(reduction, r)
            sinks.close_all()
        return meter.integrated_lufs(), 20 * math.log10(peak) if peak > 0 else float("-inf"), reduction

    if not math.isfinite(input_lufs):
        # As the whole-file stage: silence is not raised (it would only lift noise).
        _copy_as_flac(source, destination, 1.0)
        metrics.update({"changed": False, "reason": "no measurable loudness"})
        return metrics
    gain_db = float(np.clip(stage.target_lufs - input_lufs, -stage.max_gain_db, stage.max_gain_db))
    max_reduction = 0.0
    for _ in range(4):
        loudness, peak_db, reduction = one_pass(gain_db)
        max_reduction = max(max_reduction, reduction)
        if abs(loudness - stage.target_lufs) < 0.1 or gain_db >= stage.max_gain_db:
            break
        gain_db = float(np.clip(gain_db + stage.target_lufs - loudness, -stage.max_gain_db, stage.max_gain_db))
    trim = 1.0
    if peak_db > stage.ceiling_dbtp:
        trim = 10 ** ((stage.ceiling_dbtp - peak_db - 0.01) / 20)
        loudness += 20 * math.log10(trim)
        peak_db += 20 * math.log10(trim)
    _copy_as_flac(staged, destination, trim)
    staged.unlink(missing_ok=True)
    metrics.update({"changed": True, "gain_db": gain_db, "limiter_reduction_db": max_reduction,
                    "output_loudness_lufs": loudness, "output_true_peak_dbtp": peak_db})
    return metrics


def read_windows(source: Path, spans: list[tuple[int, int]], context_n: int) -> Iterator[tuple[np.ndarray, int]]:
    """For each span: (the span with ``context_n`` samples each side, (channels, samples); where that starts)."""
    with sf.SoundFile(str(source)) as reader:
        total = reader.frames
        for start, end in spans:
            w0, w1 = max(0, start - context_n), min(total, end + context_n)
            reader.seek(w0)
            yield reader.read(w1 - w0, dtype="float32", always_2d=True).T.copy(), w0


def _copy_as_flac(source: Path, destination: Path, scale: float) -> None:
    with _Sinks() as sinks:
        with sf.SoundFile(str(source)) as reader:
            out = sinks.open(destination, reader.samplerate, reader.channels, flac=True)
            while True:
                piece = reader.read(reader.samplerate * 60, dtype="float32", always_2d=True)
                if not len(piece):
                    break
                out.write(piece.T * np.float32(scale))
        sinks.close_all()


class _Sink:
    def __init__(self, handle: sf.SoundFile, flac: bool):
        self.handle = handle
        self.flac = flac

    def write(self, piece: np.ndarray) -> None:
        """``piece``: (channels, samples)."""
        if self.flac:
            piece = np.clip(piece, -1.0, 1.0 - 2.0**-23)
        self.handle.write(np.ascontiguousarray(piece.T))


class _Sinks:
    """Output files opened under temporary names, renamed into place only when every block is written."""

    def __init__(self) -> None:
        self._open: list[tuple[Any, _Sink]] = []
        self._done = False

    def __enter__(self) -> _Sinks:
        return self

    def open(self, destination: Path, rate_hz: int, channels: int, flac: bool = False) -> _Sink:
        context = atomic_path(Path(destination))
        temporary = context.__enter__()
        handle = sf.SoundFile(str(temporary), "w", samplerate=rate_hz, channels=channels,
                              subtype="PCM_24" if flac else "FLOAT", format="FLAC" if flac else "WAV")
        sink = _Sink(handle, flac)
        self._open.append((context, sink))
        return sink

    def close_all(self) -> None:
        for context, sink in self._open:
            sink.handle.close()
            context.__exit__(None, None, None)
        self._open.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        # An error part-way leaves no output behind: each temporary file is removed.
        for context, sink in self._open:
            sink.handle.close()
            context.__exit__(exc_type, exc, tb)
        self._open.clear()


# -- diagnosis of a long item ----------------------------------------------------

# How excerpts' diagnoses combine into the item's, by field; other numbers
# take the median. Hum fields come from the excerpts where hum was found.
_DIAGNOSIS_MERGE = {
    "dc_offset_dbfs": max,
    "hum_level_dbfs": max,
    "hum_drift_hz": max,
    "noise_floor_dbfs": min,
    "effective_bandwidth_hz": max,
    "clicks_per_minute": np.mean,
    "clipped_fraction": np.mean,
}


def diagnose_excerpts(path: Path, excerpt_s: float = 60.0, excerpts: int = 10):
    """The diagnosis of a long audio file from ``excerpts`` evenly spread excerpts.

    Diagnosing a whole 3-hour file would take as much memory as the whole-file
    chain; ten minutes spread over the item find the same hum, clicks,
    clipping and bandwidth (a defect confined to one short stretch may be
    missed here, but every stage still detects it block by block).
    """
    from archivox.tasks.diagnose import Diagnosis, diagnose

    info = sf.info(str(path))
    rate_hz, total = info.samplerate, info.frames
    length = min(total, int(excerpt_s * rate_hz))
    starts = np.linspace(0, total - length, max(1, min(excerpts, total // max(length, 1)))).astype(int)
    found = []
    with sf.SoundFile(str(path)) as reader:
        for start in starts:
            reader.seek(int(start))
            found.append(diagnose(reader.read(length, dtype="float32", always_2d=True).T.copy(), rate_hz))
    merged: dict[str, Any] = {}
    hummed = [d for d in found if d.hum_found] or found
    for f in fields(Diagnosis):
        pool = hummed if f.name.startswith("hum_") else found
        values = [getattr(d, f.name) for d in pool if getattr(d, f.name) is not None]
        if not values:
            merged[f.name] = None if f.name not in ("hum_harmonics",) else []
        elif isinstance(values[0], (bool, np.bool_)):
            merged[f.name] = bool(any(values))
        elif isinstance(values[0], list):
            merged[f.name] = sorted({v for vs in values for v in vs})
        elif isinstance(values[0], str):
            merged[f.name] = next((v for v in values if v), "")
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            merged[f.name] = values[0]
        else:
            finite = [float(v) for v in values if math.isfinite(float(v))]
            merged[f.name] = float(_DIAGNOSIS_MERGE.get(f.name, np.median)(finite)) if finite else values[0]
    merged["duration_s"] = total / rate_hz
    return replace(found[0], **merged)
