"""Click and crackle removal: detect impulses in the AR prediction error, refill them by AR interpolation.

A click is a short broadband impulse that the recording's own short-term
spectrum cannot predict, so it stands out in the error of a linear predictor
fitted block by block. Voiced speech also leaves peaks in that error, one per
glottal pulse, so a sample counts as a click only when it stands
``threshold_db`` above both the robust level of the error around it and the
typical peak of the error in the surrounding 200 ms; a click is rare, the
glottal pulses are not. Marked runs are refilled from the surrounding signal
by least-squares AR interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from archivox.tasks.armodel import block_ar, lsar_fill, matched_error, prediction_error
from archivox.tasks.chain import Stage, StageOutput, check_range

_BLOCK_S = 0.02
_PEAK_HOP_S = 0.01
_PEAK_CONTEXT_S = 0.1  # each side
_CORE_DB = 12.0  # forward and backward error both this far over their level: a corrupted sample
_LOOSE_DB = 12.0  # how much more lenient the search that refits the models is


def _order_for(rate_hz: int, order: int) -> int:
    return max(8, int(round(order * rate_hz / 48_000)))


def _robust_level(values: np.ndarray, block: int) -> np.ndarray:
    """Per-sample robust sigma of ``values`` (n,): 1.4826 x the median absolute value of its block."""
    n = values.size
    blocks = -(-n // block)
    padded = np.pad(np.abs(values), (0, blocks * block - n), mode="edge")
    return np.repeat(1.4826 * np.median(padded.reshape(blocks, block), axis=1) + 1e-15, block)[:n]


def _typical_peak(values: np.ndarray, rate_hz: int) -> np.ndarray:
    """Per-sample median of the 10 ms maxima of |values| over +-100 ms. (n,)"""
    n = values.size
    hop = max(1, int(_PEAK_HOP_S * rate_hz))
    hops = -(-n // hop)
    maxima = np.pad(np.abs(values), (0, hops * hop - n)).reshape(hops, hop).max(axis=1)
    typical = ndimage.median_filter(maxima, size=2 * int(_PEAK_CONTEXT_S / _PEAK_HOP_S) + 1, mode="nearest")
    return np.repeat(typical, hop)[:n] + 1e-15


def _pitch_compensated(values: np.ndarray, rate_hz: int, block: int) -> np.ndarray:
    """|values| with the voiced pitch-pulse train taken out. (n,) -> (n,).

    Voiced speech leaves one peak per glottal pulse in the prediction error;
    each is predictable from the pulse one period earlier (or later), while a
    click is not. Per block, the period T and gain b come from the error's own
    autocorrelation; the result is the smaller of |v(t) - b v(t-T+j)| and
    |v(t) - b v(t+T+j)| over a +-2 sample jitter j, so that a click neither
    cancels nor leaves a ghost one period later.
    """
    n = values.size
    blocks = -(-n // block)
    low, high = int(rate_hz / 400), int(rate_hz / 60)
    span = 1 << int(np.ceil(np.log2(2.5 * high)))  # long enough for two of the longest periods
    padded = np.pad(values, (span // 2, span))
    frames = np.lib.stride_tricks.sliding_window_view(padded, span)[::block][:blocks] * np.hanning(span)
    spectrum = np.abs(sp_fft.rfft(frames.astype(np.float32), n=2 * span, axis=1)) ** 2
    acf = sp_fft.irfft(spectrum, axis=1)[:, : high + 1].astype(np.float64)
    lag = low + np.argmax(acf[:, low : high + 1], axis=1)
    gain = np.clip(acf[np.arange(blocks), lag] / (acf[:, 0] + 1e-30), 0.0, 1.0)
    gain[gain < 0.3] = 0.0  # unvoiced: nothing periodic to take out
    lag_t = np.repeat(lag, block)[:n]
    gain_t = np.repeat(gain, block)[:n]
    t = np.arange(n)
    best_back = np.full(n, np.inf)
    best_ahead = np.full(n, np.inf)
    for j in range(-2, 3):
        back = np.clip(t - lag_t + j, 0, n - 1)
        ahead = np.clip(t + lag_t + j, 0, n - 1)
        best_back = np.minimum(best_back, np.abs(values - gain_t * values[back]))
        best_ahead = np.minimum(best_ahead, np.abs(values - gain_t * values[ahead]))
    return np.minimum(best_back, best_ahead)


def find_clicks(
    x: np.ndarray,
    rate_hz: int,
    order: int = 32,
    threshold_db: float = 34.0,
    peak_ratio_db: float = 6.0,
    min_relative_db: float = -10.0,
    max_click_ms: float = 3.0,
    coefs: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Click regions as [start, stop) sample ranges of one channel x: (n,) float64.

    A sample is a click candidate when the matched prediction error there is
    ``threshold_db`` above its robust level in the block and ``peak_ratio_db``
    above its typical peak over +-100 ms, and the prediction error itself is
    no more than ``-min_relative_db`` below the signal's local RMS (so that
    faint ticks buried in loud speech, which nobody hears, are left alone).
    """
    n = x.size
    p = _order_for(rate_hz, order)
    block = max(4 * p, int(_BLOCK_S * rate_hz))
    if n < 2 * block:
        return []
    if coefs is None:
        coefs = block_ar(x, p, block)
    error = prediction_error(x, coefs, block)
    error[:p] = 0.0  # the predictor has no past there
    matched = _pitch_compensated(matched_error(error, coefs, block), rate_hz, block)
    local_rms = np.sqrt(np.maximum(ndimage.uniform_filter1d(x * x, int(_PEAK_HOP_S * rate_hz) | 1), 0) + 1e-20)
    big_error = ndimage.maximum_filter1d(np.abs(error), 7) >= local_rms * 10 ** (min_relative_db / 20)
    gate = np.maximum(
        _robust_level(matched, block) * 10 ** (threshold_db / 20),
        _typical_peak(matched, rate_hz) * 10 ** (peak_ratio_db / 20),
    )
    hits = np.flatnonzero((matched > gate) & big_error)
    if hits.size == 0:
        return []
    # Group hits closer than half the predictor order (one click lights up
    # the matched error for p samples around it), then narrow each group to
    # the samples the click itself corrupted: there both the forward and the
    # backward prediction errors are large, while the forward error's tail
    # after a click and the backward error's tail before it are not both.
    backward = _backward_error(x, coefs, block)
    level = _robust_level(error, block)
    core = np.minimum(np.abs(error), np.abs(backward)) > level * 10 ** (_CORE_DB / 20)
    breaks = np.flatnonzero(np.diff(hits) > p // 2) + 1
    regions = []
    pad = 2
    longest = int(max_click_ms * 1e-3 * rate_hz)
    for group in np.split(hits, breaks):
        # The corrupted samples sit around the matched error's peak; a voiced
        # pulse further off can light up ``core`` too, so look only near it.
        peak = int(group[np.argmax(matched[group])])
        lo, hi = max(0, peak - p // 2), min(n, peak + p // 2 + 1)
        inside = np.flatnonzero(core[lo:hi])
        if inside.size:
            start, stop = lo + int(inside[0]) - pad, lo + int(inside[-1]) + 1 + pad
        else:
            start, stop = peak - 2 * pad, peak + 1 + 2 * pad
        if stop - start > longest:
            # A long burst is not a click (a plosive, a door); leave it be.
            continue
        regions.append((max(start, p), min(stop, n - p)))
    return [(s, e) for s, e in _merge(regions) if e > s]


def _backward_error(x: np.ndarray, coefs: np.ndarray, block: int) -> np.ndarray:
    """Prediction error of x (n,) run backwards in time with the same models (autocorrelation
    models predict as well backwards as forwards)."""
    n = x.size
    blocks = coefs.shape[0]
    pad = blocks * block - n
    reversed_x = np.concatenate([np.zeros(pad), x[::-1]])
    return prediction_error(reversed_x, coefs[::-1], block)[pad:][::-1]


def fill_regions(x: np.ndarray, regions: list[tuple[int, int]], coefs: np.ndarray, block: int) -> np.ndarray:
    """Refill [start, stop) ranges of x (n,) by LSAR interpolation with each region's block model."""
    out = x.copy()
    p = coefs.shape[1]
    for start, stop in regions:
        lo, hi = max(0, start - 2 * p), min(x.size, stop + 2 * p)
        segment = out[lo:hi]
        missing = np.zeros(hi - lo, dtype=bool)
        missing[start - lo : stop - lo] = True
        a = coefs[min(start // block, coefs.shape[0] - 1)]
        out[lo:hi] = lsar_fill(segment, missing, a)
    return out


@dataclass
class Declick(Stage):
    """Find clicks and crackle and refill them from the surrounding signal.

    ``threshold_db``: how far the matched prediction error of an impulse must
    rise above its robust level in the block; lower finds fainter clicks and
    risks consonants. ``peak_ratio_db``: how far above the typical error peak
    of the surrounding +-100 ms (glottal pulses) it must rise.
    ``min_relative_db``: clicks whose prediction error is further than this
    below the local signal RMS are masked by the programme and left alone.
    ``order``: predictor order at 48 kHz (scaled with the rate).
    ``max_click_ms``: longer bursts are not treated as clicks.
    """

    name = "declick"
    threshold_db: float = 34.0
    peak_ratio_db: float = 6.0
    min_relative_db: float = -10.0
    order: int = 32
    max_click_ms: float = 3.0

    def __post_init__(self) -> None:
        check_range("threshold_db", self.threshold_db, 16.0, 60.0)
        check_range("peak_ratio_db", self.peak_ratio_db, 6.0, 40.0)
        check_range("min_relative_db", self.min_relative_db, -60.0, 20.0)
        check_range("order", self.order, 8, 128)
        check_range("max_click_ms", self.max_click_ms, 0.1, 20.0)


    def _geometry(self, rate: int) -> tuple[int, int]:
        p = _order_for(rate, self.order)
        return p, max(4 * p, int(_BLOCK_S * rate))

    def find(self, x: np.ndarray, rate: int) -> tuple[list[tuple[int, int]], np.ndarray | None]:
        """Click regions of one channel x (n,) and the AR models to refill them with.

        """
        p, block = self._geometry(rate)
        if x.size < 2 * block:
            return [], None
        coefs = block_ar(x, p, block)
        # Loud clicks whiten the models fitted around them, which takes the
        # matched detector's gain away; a lenient first search finds enough of
        # them to refit the models on a repaired copy before the real search.
        loose = find_clicks(x, rate, self.order, self.threshold_db - _LOOSE_DB, max(0.0, self.peak_ratio_db - 6),
                            self.min_relative_db, self.max_click_ms, coefs=coefs)
        if loose:
            coefs = block_ar(fill_regions(x, loose, coefs, block), p, block)
        regions = find_clicks(x, rate, self.order, self.threshold_db, self.peak_ratio_db,
                              self.min_relative_db, self.max_click_ms, coefs=coefs)
        return regions, coefs

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        found = [self.find(np.asarray(ch, dtype=np.float64), sample_rate_hz) for ch in audio]
        minutes = audio.shape[1] / sample_rate_hz / 60 if audio.shape[1] else 0.0
        count = max((len(r) for r, _ in found), default=0)
        return {
            "clicks": int(sum(len(r) for r, _ in found)),
            "clicks_per_minute": round(count / minutes, 2) if minutes else 0.0,
            "_found": found,
        }

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        found = findings["_found"]
        if not any(regions for regions, _ in found):
            return StageOutput(audio, {"changed": False})
        _, block = self._geometry(sample_rate_hz)
        out = np.array(audio, dtype=np.float64)
        for c, (regions, coefs) in enumerate(found):
            if regions:
                out[c] = fill_regions(out[c], regions, coefs, block)
        samples = sum(e - s for regions, _ in found for s, e in regions)
        return StageOutput(
            out.astype(np.float32),
            {"changed": True, "samples_repaired": int(samples), "seconds_repaired": round(samples / sample_rate_hz, 4)},
        )


def _merge(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged
