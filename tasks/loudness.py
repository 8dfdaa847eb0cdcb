"""Integrated loudness normalisation with a true-peak ceiling."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from archivox.tasks.chain import Stage, StageOutput, check_range
from scipy import ndimage, signal

# ITU-R BS.1770 true peak is measured on a 4x oversampled signal.
_TRUE_PEAK_OVERSAMPLING = 4
_MIN_LOUDNESS_SECONDS = 0.4  # one BS.1770 gating block


def k_weighting_sos(rate_hz: int) -> np.ndarray:
    """The BS.1770 K-weighting filter (high shelf, then RLB high-pass) as second-order sections."""
    # The standard gives coefficients at 48 kHz only; these analog prototypes
    # reproduce them and carry over to other rates.
    k = math.tan(math.pi * 1681.974450955533 / rate_hz)
    q = 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh**0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0,
             1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    k = math.tan(math.pi * 38.13547087602444 / rate_hz)
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    return np.array([shelf, highpass])


class LoudnessMeter:
    """Integrated loudness (BS.1770-4, LUFS) of audio fed in consecutive pieces.

    Keeps only the mean square of each 100 ms hop per channel (about 140 kB
    per hour per channel), so an item of any length is measured exactly as
    if it were read whole: 400 ms gating blocks are four hops.
    """

    _HOP_S = 0.1
    _GATE_ABSOLUTE_LUFS = -70.0
    _GATE_RELATIVE_LU = -10.0

    def __init__(self, rate_hz: int, channels: int):
        self.rate_hz = rate_hz
        self.hop_n = int(round(self._HOP_S * rate_hz))
        self.sos = k_weighting_sos(rate_hz)
        self.state = np.zeros((self.sos.shape[0], channels, 2))
        self.carry = np.zeros((channels, 0))
        self.hops: list[np.ndarray] = []  # (channels,) mean squares
        # Surround channels (4th and 5th) weigh 1.41 in BS.1770; others 1.0.
        self.weights = np.array([1.41 if c in (3, 4) else 1.0 for c in range(channels)])

    def add(self, audio: np.ndarray) -> None:
        """``audio``: (channels, samples), the next piece of the item."""
        filtered, self.state = signal.sosfilt(self.sos, audio.astype(np.float64), axis=1, zi=self.state)
        joined = np.concatenate([self.carry, filtered], axis=1)
        whole = joined.shape[1] // self.hop_n * self.hop_n
        if whole:
            squares = (joined[:, :whole] ** 2).reshape(joined.shape[0], -1, self.hop_n).mean(axis=2)
            self.hops.extend(squares.T)
        self.carry = joined[:, whole:]

    def integrated_lufs(self) -> float:
        if len(self.hops) < 4:
            return float("-inf")
        hops = np.array(self.hops)  # (hops, channels)
        blocks = (hops[:-3] + hops[1:-2] + hops[2:-1] + hops[3:]) / 4.0
        power = blocks @ self.weights
        with np.errstate(divide="ignore"):
            loudness = -0.691 + 10 * np.log10(power)
        kept = loudness > self._GATE_ABSOLUTE_LUFS
        if not kept.any():
            return float("-inf")
        relative = -0.691 + 10 * np.log10(power[kept].mean()) + self._GATE_RELATIVE_LU
        kept &= loudness > relative
        return float(-0.691 + 10 * np.log10(power[kept].mean()))


def integrated_loudness_lufs(audio: np.ndarray, sample_rate_hz: int) -> float:
    """BS.1770 integrated loudness of (channels, samples); -inf for silence or too-short audio."""
    if audio.shape[1] < int(_MIN_LOUDNESS_SECONDS * sample_rate_hz):
        return float("-inf")
    meter = LoudnessMeter(sample_rate_hz, audio.shape[0])
    # In pieces so that the float64 copy stays small for long audio.
    piece = sample_rate_hz * 60
    for start in range(0, audio.shape[1], piece):
        meter.add(audio[:, start : start + piece])
    return meter.integrated_lufs()


def true_peak_envelope(audio: np.ndarray) -> np.ndarray:
    """Per-sample true peak (max over channels of the 4x oversampled magnitude). Shape (samples,)."""
    if audio.shape[1] == 0:
        return np.zeros(0, dtype=np.float32)
    upsampled = signal.resample_poly(audio, _TRUE_PEAK_OVERSAMPLING, 1, axis=1)
    magnitude = np.abs(upsampled).max(axis=0)
    n = audio.shape[1]
    return magnitude[: n * _TRUE_PEAK_OVERSAMPLING].reshape(n, _TRUE_PEAK_OVERSAMPLING).max(axis=1)


def true_peak_dbtp(audio: np.ndarray) -> float:
    envelope = true_peak_envelope(audio)
    peak = float(envelope.max()) if envelope.size else 0.0
    return 20 * np.log10(peak) if peak > 0 else float("-inf")


@dataclass
class Loudness(Stage):
    """Bring integrated loudness to ``target_lufs`` with true peaks at or under ``ceiling_dbtp``.

    Gain is applied first; peaks that would then cross the ceiling are caught
    by a look-ahead limiter whose gain curve is the running minimum of the
    gain each sample needs, smoothed so that it does not distort. Limiting
    lowers loudness a little, so gain and limiting are repeated a few times.
    """

    name = "loudness"
    target_lufs: float = -18.0
    ceiling_dbtp: float = -1.0
    lookahead_ms: float = 2.0
    release_ms: float = 80.0
    # Enough for a transfer made 30-40 dB under full scale (a cassette
    # digitised with a lot of headroom) to reach the target once the
    # denoiser has taken its noise away; more would mostly raise dither.
    max_gain_db: float = 50.0

    def __post_init__(self) -> None:
        check_range("target_lufs", self.target_lufs, -40.0, -5.0)
        check_range("ceiling_dbtp", self.ceiling_dbtp, -12.0, 0.0)
        check_range("lookahead_ms", self.lookahead_ms, 0.5, 20.0)
        check_range("release_ms", self.release_ms, 5.0, 1000.0)
        check_range("max_gain_db", self.max_gain_db, 0.0, 60.0)

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        return {
            "loudness_lufs": integrated_loudness_lufs(audio, sample_rate_hz),
            "true_peak_dbtp": true_peak_dbtp(audio),
        }

    def _limit(self, audio: np.ndarray, sample_rate_hz: int) -> tuple[np.ndarray, float]:
        ceiling = 10 ** (self.ceiling_dbtp / 20)
        envelope = true_peak_envelope(audio)
        needed = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
        if needed.min() >= 1.0:
            return audio, 0.0
        lookahead = max(1, int(self.lookahead_ms * 1e-3 * sample_rate_hz))
        # The running minimum centred on each sample starts the gain reduction
        # before the peak arrives (look-ahead) and holds it after.
        gain = ndimage.minimum_filter1d(needed, size=2 * lookahead + 1, mode="nearest")
        # Smooth the release with a one-pole filter run backwards and forwards;
        # taking the minimum keeps every sample at or under its needed gain.
        alpha = np.exp(-1.0 / (self.release_ms * 1e-3 * sample_rate_hz))
        smoothed = signal.lfilter([1 - alpha], [1, -alpha], gain - 1.0, zi=[0.0])[0] + 1.0
        smoothed = signal.lfilter([1 - alpha], [1, -alpha], smoothed[::-1] - 1.0, zi=[0.0])[0][::-1] + 1.0
        gain = np.minimum(gain, smoothed)
        limited = audio * gain[np.newaxis, :].astype(np.float32)
        return limited, float(-20 * np.log10(gain.min()))

    def gain_and_limit(self, audio: np.ndarray, sample_rate_hz: int, gain_db: float) -> tuple[np.ndarray, float]:
        """``audio`` raised by ``gain_db`` with peaks over the ceiling limited; returns (audio, limiter reduction dB).

        For block-by-block processing of long items, where the gain comes from
        the whole item's loudness (``archivox.tasks.longform``).
        """
        return self._limit((audio * np.float32(10 ** (gain_db / 20))).astype(np.float32), sample_rate_hz)

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        loudness = findings["loudness_lufs"]
        if not np.isfinite(loudness):
            # Silence or a clip shorter than one gating block has no integrated
            # loudness; raising it would only amplify noise.
            return StageOutput(audio, {"changed": False, "reason": "no measurable loudness"})
        out = audio
        total_gain_db = 0.0
        max_reduction_db = 0.0
        for _ in range(5):
            step_db = float(np.clip(self.target_lufs - loudness, -self.max_gain_db, self.max_gain_db - total_gain_db))
            total_gain_db += step_db
            out = (audio * np.float32(10 ** (total_gain_db / 20))).astype(np.float32)
            out, reduction_db = self._limit(out, sample_rate_hz)
            max_reduction_db = max(max_reduction_db, reduction_db)
            loudness = integrated_loudness_lufs(out, sample_rate_hz)
            if abs(loudness - self.target_lufs) < 0.1 or total_gain_db >= self.max_gain_db:
                break
        # Smoothing can leave a sample a hair over the ceiling; a final
        # static trim guarantees the ceiling, which matters more than 0.01 LU.
        peak_db = true_peak_dbtp(out)
        if peak_db > self.ceiling_dbtp:
            out = out * np.float32(10 ** ((self.ceiling_dbtp - peak_db - 0.01) / 20))
            loudness = integrated_loudness_lufs(out, sample_rate_hz)
        return StageOutput(
            out.astype(np.float32),
            {
                "changed": True,
                "gain_db": total_gain_db,
                "limiter_reduction_db": max_reduction_db,
                "output_loudness_lufs": loudness,
                "output_true_peak_dbtp": true_peak_dbtp(out),
            },
        )
