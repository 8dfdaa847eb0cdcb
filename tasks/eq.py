"""Speech EQ: a high-pass under the speech band and a gentle high shelf for air.

Denoising takes some of the top octave with the noise; restoration guides
give back +1.5 to +2 dB at 8-12 kHz (the RBJ shelf is at half its gain
at ``shelf_hz`` and at full gain an octave above). scipy has no shelving filter, so
the shelf is the RBJ "Audio EQ Cookbook" biquad; the high-pass is a
Butterworth from scipy.signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import signal

from archivox.tasks.chain import Stage, StageOutput, check_range

# Energy under the high-pass corner, relative to the whole, above which the
# high-pass has something to take away (rumble, handling noise, wind).
_RUMBLE_THRESHOLD_DB = -40.0
# The shelf band's spectral density must be within this of the speech core's
# (0.5-4 kHz) for a boost to make sense: raising an empty band (a 16 kHz
# source at 48 kHz) only raises the resampler's noise.
_AIR_THRESHOLD_DB = -50.0


def high_shelf_sos(freq_hz: float, gain_db: float, sample_rate_hz: int, slope: float = 1.0) -> np.ndarray:
    """RBJ cookbook high shelf as one second-order section. (1, 6)"""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq_hz / sample_rate_hz
    cos_w0, sin_w0 = np.cos(w0), np.sin(w0)
    alpha = sin_w0 / 2 * np.sqrt((a + 1 / a) * (1 / slope - 1) + 2)
    sq = 2 * np.sqrt(a) * alpha
    b = np.array([a * ((a + 1) + (a - 1) * cos_w0 + sq), -2 * a * ((a - 1) + (a + 1) * cos_w0),
                  a * ((a + 1) + (a - 1) * cos_w0 - sq)])
    den = np.array([(a + 1) - (a - 1) * cos_w0 + sq, 2 * ((a - 1) - (a + 1) * cos_w0), (a + 1) - (a - 1) * cos_w0 - sq])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def _welch(audio: np.ndarray, sample_rate_hz: int) -> tuple[np.ndarray, np.ndarray] | None:
    mono = np.asarray(audio, dtype=np.float64).mean(axis=0)
    if mono.size < 256:
        return None
    return signal.welch(mono, fs=sample_rate_hz, nperseg=min(8192, mono.size))


def band_energy_db(spectrum: tuple[np.ndarray, np.ndarray] | None, low_hz: float, high_hz: float) -> float:
    """Energy in [low_hz, high_hz) relative to the total, from a Welch spectrum ``(freqs, psd)``."""
    if spectrum is None:
        return float("-inf")
    freqs, psd = spectrum
    band = (freqs >= low_hz) & (freqs < high_hz)
    return float(10 * np.log10(psd[band].sum() / (psd.sum() + 1e-30) + 1e-30))


def band_density_db(spectrum: tuple[np.ndarray, np.ndarray] | None, low_hz: float, high_hz: float) -> float:
    """Mean spectral density in [low_hz, high_hz) relative to that of the speech core, 0.5-4 kHz."""
    if spectrum is None:
        return float("-inf")
    freqs, psd = spectrum
    band = (freqs >= low_hz) & (freqs < high_hz)
    core = (freqs >= 500) & (freqs < 4000)
    if not band.any():
        return float("-inf")
    return float(10 * np.log10(psd[band].mean() / (psd[core].mean() + 1e-30) + 1e-30))


@dataclass
class SpeechEQ(Stage):
    """High-pass at ``highpass_hz`` (0 = off) and a high shelf of ``shelf_gain_db`` from ``shelf_hz``.

    The high-pass runs only when there is energy under its corner, and the
    shelf only when the recording has content above ``shelf_hz`` (a 16 kHz
    source at 48 kHz has none, and boosting it would only lift hiss).
    """

    name = "eq"
    highpass_hz: float = 70.0
    highpass_order: int = 4
    shelf_hz: float = 8_000.0
    shelf_gain_db: float = 1.5

    def __post_init__(self) -> None:
        if self.highpass_hz != 0.0:
            check_range("highpass_hz", self.highpass_hz, 20.0, 200.0)
        check_range("highpass_order", self.highpass_order, 1, 8)
        check_range("shelf_hz", self.shelf_hz, 2_000.0, 16_000.0)
        check_range("shelf_gain_db", self.shelf_gain_db, -6.0, 6.0)

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        spectrum = _welch(audio, sample_rate_hz)  # one spectrum for both measures
        rumble = band_energy_db(spectrum, 0.0, self.highpass_hz) if self.highpass_hz else float("-inf")
        air = float("-inf")
        if self.shelf_hz < 0.45 * sample_rate_hz:
            # From a little above the corner, clear of a resampler's transition band.
            air = band_density_db(spectrum, 1.15 * self.shelf_hz, min(1.5 * self.shelf_hz, 0.45 * sample_rate_hz))
        return {"rumble_db": round(rumble, 2), "air_db": round(air, 2)}

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        sections = []
        applied = []
        if self.highpass_hz and findings["rumble_db"] > _RUMBLE_THRESHOLD_DB:
            sections.append(signal.butter(self.highpass_order, self.highpass_hz, btype="highpass",
                                          fs=sample_rate_hz, output="sos"))
            applied.append("highpass")
        if self.shelf_gain_db and findings["air_db"] > _AIR_THRESHOLD_DB:
            sections.append(high_shelf_sos(self.shelf_hz, self.shelf_gain_db, sample_rate_hz))
            applied.append("shelf")
        if not sections or audio.shape[1] == 0:
            return StageOutput(audio, {"changed": False, "applied": []})
        sos = np.concatenate(sections, axis=0)
        out = signal.sosfilt(sos, np.asarray(audio, dtype=np.float64), axis=1)
        return StageOutput(out.astype(np.float32), {"changed": True, "applied": applied})
