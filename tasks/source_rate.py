"""Repairs made before the chain, at the source's own sample rate, before the audio is resampled to the working rate.

Clipping and clicks are defects of single samples. Resampling a 16 kHz
transfer to 48 kHz smooths a clipped flat top into ripples and spreads a
click into a band-limited pulse, and the declip and declick stages, which
look for exactly those shapes, then find almost nothing. On corpus speech
with the defects planted at the source's rate (``bench/source_rate.py``):
a 16 kHz file clipped on 2 % of its samples gained 0 dB, and clicks in
16 kHz speech were found with F1 0.00 (22.05 kHz: 0.14, 44.1 kHz: 0.93),
against 0.95-1.00 when the stage runs at the source's rate.

So a source recorded at another rate is decoded at that rate, these stages
run there block by block (memory does not grow with the item), and the
repaired audio is then resampled. The stages at 48 kHz that follow (DC,
dehum, denoise, EQ, loudness) are not sensitive to the resampling. A long
item at 48 kHz is declipped here too, so that its rebuilt peaks get one
gain for the whole item (see ``stages_at_source_rate``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from archivox.tasks.chain import FULL_BAND_RATE_HZ, WORKING_RATE_HZ, Stage, StageRecord, build_chain

SOURCE_RATE_STAGES: tuple[str, ...] = ("declip", "declick")
# The click detector's settings were chosen and measured at 16-48 kHz; a
# 96 kHz transfer keeps its clicks sharp once brought down to 48 kHz.
_DECLICK_MAX_RATE_HZ = 48_000


def stages_at_source_rate(stage_names: list[str], stage_params: dict[str, dict[str, Any]],
                          source_rate_hz: int, long_item: bool = False) -> list[Stage]:
    """The stages among ``stage_names`` (with their parameters) to run at ``source_rate_hz`` before the chain.

    A source at the working rate needs none, except declip on a long item:
    the chain restores a long item block by block, and declip's rebuilt
    peaks, scaled down block by block to stay under full scale, would step
    the level from one block to the next (10 dB on a generated item); run
    first over the whole file, they get one gain. Empty for a source of
    unknown rate.
    """
    if source_rate_hz == 0:
        return []
    names = [n for n in SOURCE_RATE_STAGES if n in stage_names]
    if source_rate_hz == WORKING_RATE_HZ:
        names = [n for n in names if n == "declip" and long_item]
    elif source_rate_hz > _DECLICK_MAX_RATE_HZ:
        names = [n for n in names if n != "declick"]
    return list(build_chain(names, {n: stage_params.get(n, {}) for n in names}).stages) if names else []


def _blocks(source: Path, block_s: float, context_s: float):
    """(window (channels, n) float64, slice of its block inside it) for every block of an audio file."""
    import soundfile as sf

    from archivox.tasks.longform import block_spans, read_windows

    info = sf.info(str(source))
    spans = block_spans(info.frames, max(1, int(block_s * info.samplerate)))
    for (start, end), (window, w0) in zip(spans, read_windows(source, spans, int(context_s * info.samplerate))):
        yield window.astype(np.float64), slice(start - w0, end - w0)


# Below FULL_BAND_RATE_HZ speech fills the whole band, and the click detector takes
# some of its own transients for clicks: on the 165 clean corpus files under
# 32 kHz its light count has a median of 0 a minute, a 99th percentile of 23
# and a maximum of 34 (bench/results/source-rate-2026-11-21-vm-session5-declick.md;
# before the rate-aware gates of session 5: median 10.6, maximum 124). A
# source that low is declicked when it has clearly more than that.
_MIN_CLICKS_PER_MINUTE_FULL_BAND = 40.0


def _finds_something(stage: Stage, window: np.ndarray, rate_hz: int) -> bool:
    if stage.name == "declick":
        # Counting, as the diagnosis counts: the thorough search costs twice as much.
        found = dataclasses.replace(stage, thorough=False).detect(window, rate_hz)
        if rate_hz < FULL_BAND_RATE_HZ:
            return found["clicks_per_minute"] >= _MIN_CLICKS_PER_MINUTE_FULL_BAND
        return found["clicks"] > 0
    findings = stage.detect(window, rate_hz)
    return findings["clipped_fraction"] > stage.min_fraction and findings["clipped_samples"] > 0


def defects_at_source_rate(source: Path, stages: list[Stage], *, block_s: float = 60.0) -> dict[str, bool]:
    """Stage name -> whether it finds anything in the file at the file's own rate (a look, nothing written)."""
    import soundfile as sf

    rate_hz = sf.info(str(source)).samplerate
    found = {stage.name: False for stage in stages}
    for window, _ in _blocks(source, block_s, 0.0):
        for stage in stages:
            found[stage.name] = found[stage.name] or _finds_something(stage, window.astype(np.float32), rate_hz)
        if all(found.values()):
            break
    return found


def defect_rates_at_source_rate(source: Path, *, block_s: float = 60.0) -> dict[str, float]:
    """``clipped_fraction`` and ``clicks_per_minute`` of a file at its own rate, counted as the diagnosis counts them."""
    import soundfile as sf

    from archivox.tasks.declick import Declick
    from archivox.tasks.declip import Declip

    declip, declick = Declip(), Declick(thorough=False)
    clipped = clicks = 0
    info = sf.info(str(source))
    rate_hz, total_n = info.samplerate, info.frames
    for window, _ in _blocks(source, block_s, 0.0):
        window = window.mean(axis=0, keepdims=True).astype(np.float32)
        clipped += declip.detect(window, rate_hz)["clipped_samples"]
        clicks += declick.detect(window, rate_hz)["clicks"]
    minutes = total_n / rate_hz / 60
    return {"clipped_fraction": round(clipped / max(total_n, 1), 6),
            "clicks_per_minute": round(clicks / minutes, 2) if minutes else 0.0}


def repair_file(source: Path, destination: Path, stages: list[Stage], *, block_s: float = 60.0,
                context_s: float = 1.0) -> tuple[list[StageRecord], float]:
    """Run ``stages`` over an audio file at its own rate, block by block, into a float32 WAV at ``destination``.

    Each block is processed with ``context_s`` on either side (more than
    either stage looks around a defect) and only its own span is kept.
    Declip's rebuilt peaks are not scaled per block (a gain that changed from
    block to block would be heard): the file keeps them, and the second value
    is the file's peak in dBFS for the caller to scale once. Returns the
    stage rows (metrics merged over blocks, ``at_source_rate`` and
    ``rate_hz`` added) and that peak.
    """
    import soundfile as sf

    from archivox.fsutil import atomic_path
    from archivox.tasks.longform import merge_block_metrics

    per_stage: list[list[tuple[dict[str, Any], float, float]]] = [[] for _ in stages]
    seconds = [0.0] * len(stages)
    peak = 0.0
    info = sf.info(str(source))
    rate_hz = info.samplerate
    with atomic_path(Path(destination)) as temporary:
        with sf.SoundFile(str(temporary), "w", samplerate=rate_hz, channels=info.channels, subtype="FLOAT",
                          format="WAV") as writer:
            for window, body in _blocks(source, block_s, context_s):
                audio = window
                for i, stage in enumerate(stages):
                    started = time.perf_counter()
                    audio, metrics = _run(stage, audio, rate_hz)
                    seconds[i] += time.perf_counter() - started
                    per_stage[i].append((metrics, (body.stop - body.start) / rate_hz, window.shape[1] / rate_hz))
                peak = max(peak, float(np.abs(audio[:, body]).max(initial=0.0)))
                writer.write(audio[:, body].T.astype(np.float32))
    records = [
        StageRecord(stage=stage.name, position=i, params=stage.params(),
                    metrics={**merge_block_metrics(per_stage[i]), "at_source_rate": True, "rate_hz": rate_hz},
                    seconds=round(seconds[i], 4), device="cpu")
        for i, stage in enumerate(stages)
    ]
    return records, float(20 * np.log10(peak + 1e-20))


def _run(stage: Stage, audio: np.ndarray, rate_hz: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One stage on one block: (audio float64, public metrics), declip without its per-call peak scaling."""
    if stage.name != "declip":
        out = stage(audio.astype(np.float32), rate_hz)
        return out.audio.astype(np.float64), out.metrics
    findings = stage.detect(audio, rate_hz)
    rebuilt = stage.rebuild(audio, rate_hz, findings)
    public = {f"found_{k}": v for k, v in findings.items() if not k.startswith("_")}
    return (audio, {**public, "changed": False}) if rebuilt is None else (rebuilt, {**public, "changed": True})


def merged_into_chain(source_records: list[dict[str, Any]], chain_records: list[dict[str, Any]],
                      diagnosis: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage rows for the catalog: the source-rate repairs first, then the chain's, renumbered.

    The diagnosis was made on the repaired audio; its clipping and click
    figures are replaced by what the source-rate stages found in the recording.
    """
    for row in source_records:
        metrics = row["metrics"]
        if row["stage"] == "declip" and metrics.get("found_clipped_fraction") is not None:
            diagnosis["clipped_fraction"] = metrics["found_clipped_fraction"]
        if row["stage"] == "declick" and metrics.get("found_clicks_per_minute") is not None:
            diagnosis["clicks_per_minute"] = metrics["found_clicks_per_minute"]
    shift = len(source_records)
    return [*source_records, *({**row, "position": row["position"] + shift} for row in chain_records)]
