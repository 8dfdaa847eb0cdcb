"""Clipping repair: refill flat-topped runs from their neighbourhood.

Clipped samples sit at the converter's (or the tape's) ceiling, so they are
found as samples at the channel's extreme value, in runs, many more than an
unclipped recording has. Each stretch with clipping is rebuilt by consistent
iterative hard thresholding of its short-time spectrum: the rebuilt waveform
keeps every unclipped sample and lies beyond the ceiling wherever it was cut
(the true peak was at least that high). Least-squares AR interpolation, which
serves the declick stage, was tried first and gained under 2 dB here: clipped
runs at 48 kHz are far longer than an AR model's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import fft as sp_fft

from archivox.tasks.chain import Stage, StageOutput, check_range



def clipped_mask(x: np.ndarray, tolerance_db: float = 0.01, min_samples: int = 8) -> tuple[np.ndarray, float, float]:
    """Samples of x (n,) at its positive or negative extreme, in runs of two or more.

    Returns (mask (n,) bool, positive ceiling, negative ceiling). A side with
    fewer than ``min_samples`` such samples is taken as unclipped: an ordinary
    recording reaches its extreme once or twice.
    """
    mask = np.zeros(x.size, dtype=bool)
    if x.size < 3:
        return mask, float("inf"), float("-inf")
    factor = 10 ** (-tolerance_db / 20)
    high, low = float(x.max()), float(x.min())
    ceilings = [float("inf"), float("-inf")]
    for side, level in enumerate((high, low)):
        if level == 0 or (side == 0 and level <= 0) or (side == 1 and level >= 0):
            continue
        at = x >= level * factor if side == 0 else x <= level * factor
        # Keep only runs of two or more: a lone sample at the extreme is a peak.
        runs = at & (np.roll(at, 1) | np.roll(at, -1))
        if runs.sum() >= min_samples:
            mask |= runs
            ceilings[side] = level * factor
    return mask, ceilings[0], ceilings[1]


def _stft(x: np.ndarray, frame: int, hop: int, window: np.ndarray) -> np.ndarray:
    """(n,) -> (frames, frame//2+1) complex spectra of Hann-windowed frames; x is padded by the caller."""
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop] * window
    return sp_fft.rfft(frames.astype(np.float32), axis=1)


def _istft(spectra: np.ndarray, n: int, frame: int, hop: int, window: np.ndarray, norm: np.ndarray) -> np.ndarray:
    frames = sp_fft.irfft(spectra, n=frame, axis=1) * window
    out = np.zeros(n)
    for i in range(frame // hop):
        part = frames[i :: frame // hop].reshape(-1)
        start = i * hop
        out[start : start + part.size] += part[: n - start]
    return out / norm


# Each pass steps on past its projection by this fraction of its last step
# (heavy-ball extrapolation), so 60 passes reach further than 80 plain ones:
# on nine of the hardest files the mean gain went from 6.4 to 7.2 dB and the
# worst from 4.4 to 5.2 dB. 0.8 gains more on most files but overshoots on
# some (one LibriVox file lost 2 dB); 0.9 diverges.
_MOMENTUM = 0.6


def declip_channel(
    x: np.ndarray, mask: np.ndarray, high: float, low: float, rate_hz: int,
    iterations: int = 60, floor_db: float = -80.0,
) -> np.ndarray:
    """Refill the clipped samples of x (n,) float64 by consistent iterative hard thresholding.

    Speech is sparse in a short-time spectrum and clipping is not: each pass
    keeps the spectral coefficients above a threshold that falls from -6 dB
    to ``floor_db`` under each frame's strongest, resynthesises, and puts the
    result back in the set of signals consistent with what was recorded (the
    unclipped samples exactly; the clipped ones beyond the ceiling). After
    Kitic, Jacques, Madhu, Hopwood and Gribonval, "Consistent iterative hard
    thresholding for signal declipping" (ICASSP 2013).
    """
    # ~85 ms: over all 194 corpus files, 2048-sample frames (43 ms at 48 kHz)
    # left 3 under a 5 dB gain (worst 4.57 dB) and 4096 left 2 (worst 4.77),
    # at the same mean gain and speed; a long frame resolves the harmonics
    # of low voices, whose long clipped runs make most of the error.
    frame = 1 << int(round(np.log2(0.085 * rate_hz)))
    hop = frame // 4
    window = np.hanning(frame + 1)[:-1]
    out = x.copy()
    # Only the stretches with clipping in them are worked on.
    for start, stop in _groups(mask, 2 * frame):
        lo, hi = max(0, start - frame), min(x.size, stop + frame)
        n = hi - lo
        total = -(-(n + 2 * frame) // hop) * hop + frame
        pad_front = frame
        y = np.zeros(total)
        y[pad_front : pad_front + n] = x[lo:hi]
        m = np.zeros(total, dtype=bool)
        m[pad_front : pad_front + n] = mask[lo:hi]
        upper = m & (y >= high)
        lower = m & (y <= low)
        weights = np.zeros(total)
        for i in range(0, total - frame + 1, hop):
            weights[i : i + frame] += window**2
        norm = np.maximum(weights, 1e-9)
        estimate = y.copy()
        previous = y.copy()
        for ratio in np.logspace(np.log10(0.5), floor_db / 20, iterations):
            spectra = _stft(estimate, frame, hop, window)
            magnitude = np.abs(spectra)
            spectra[magnitude < ratio * magnitude.max(axis=1, keepdims=True)] = 0
            z = _istft(spectra, total, frame, hop, window, norm)
            projected = np.where(upper, np.maximum(z, high), np.where(lower, np.minimum(z, low), y))
            estimate = projected + _MOMENTUM * (projected - previous)
            estimate = np.where(upper, np.maximum(estimate, high), np.where(lower, np.minimum(estimate, low), y))
            previous = projected
        estimate = previous
        out[lo:hi] = estimate[pad_front : pad_front + n]
    return out


def _groups(mask: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[start, stop) of runs of True, runs closer than ``gap`` merged."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap) + 1
    return [(int(g[0]), int(g[-1]) + 1) for g in np.split(idx, breaks)]


@dataclass
class Declip(Stage):
    """Reconstruct clipped runs from their neighbourhood.

    ``tolerance_db``: how close to the channel's extreme a sample must be to
    count as clipped. ``min_fraction``: clipping below this fraction of the
    samples is left alone. ``iterations`` and ``floor_db``: passes of the
    reconstruction and the lowest spectral level (re each frame's peak) it
    brings back. ``headroom_db``: the repaired peaks can exceed full scale, so
    the output is scaled down when needed to keep peaks this far under it.
    """

    name = "declip"
    tolerance_db: float = 0.01
    min_fraction: float = 1e-4
    iterations: int = 60
    floor_db: float = -80.0
    headroom_db: float = 1.0

    def __post_init__(self) -> None:
        check_range("tolerance_db", self.tolerance_db, 0.0, 1.0)
        check_range("min_fraction", self.min_fraction, 0.0, 0.1)
        check_range("iterations", self.iterations, 5, 500)
        check_range("floor_db", self.floor_db, -120.0, -20.0)
        check_range("headroom_db", self.headroom_db, 0.0, 12.0)


    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        found = [clipped_mask(np.asarray(ch, dtype=np.float64), self.tolerance_db) for ch in audio]
        n = max(audio.shape[1], 1)
        fractions = [float(m.sum()) / n for m, _, _ in found]
        return {
            "clipped_fraction": round(max(fractions, default=0.0), 6),
            "clipped_samples": int(sum(m.sum() for m, _, _ in found)),
            "_found": found,
        }

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        if findings["clipped_fraction"] <= self.min_fraction or findings["clipped_samples"] == 0:
            return StageOutput(audio, {"changed": False})
        out = np.array(audio, dtype=np.float64)
        for c, (mask, high, low) in enumerate(findings["_found"]):
            if mask.any():
                out[c] = declip_channel(out[c], mask, high, low, sample_rate_hz, self.iterations, self.floor_db)
        peak = float(np.abs(out).max())
        limit = 10 ** (-self.headroom_db / 20)
        scale = min(1.0, limit / peak) if peak > 0 else 1.0
        return StageOutput(
            (out * scale).astype(np.float32),
            {"changed": True, "restored_peak_dbfs": round(20 * np.log10(peak + 1e-20), 2),
             "scaled_db": round(20 * np.log10(scale), 2)},
        )
