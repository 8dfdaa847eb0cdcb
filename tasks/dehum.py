"""Mains hum removal that follows a drifting fundamental.

Detection works on one-second frames of a 4 kHz copy of the audio: for every
candidate fundamental between ``min_hz`` and ``max_hz`` it adds up how far
each harmonic line stands above the local spectral floor. Hum is stationary,
so a fundamental counts as found only when its lines stand out in most
frames; voiced speech moves its pitch and does not.

Repair synthesises the hum and subtracts it: the frame-wise fundamental is
integrated into a phase track, each found harmonic is demodulated along that
track and low-pass filtered to ``bandwidth_hz`` (its slowly varying complex
amplitude), and the sum of the re-modulated harmonics is taken away. That is
a comb of notches, ``2 * bandwidth_hz`` wide, that moves with the tape speed
and leaves the rest of the spectrum alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import ndimage, signal
from scipy.interpolate import CubicSpline

from archivox.tasks.chain import Stage, StageOutput, check_range

ANALYSIS_RATE_HZ = 4_000
_FRAME_S = 1.0
_HOP_S = 0.25
_NFFT = 1 << 16  # 0.061 Hz bins at the analysis rate
_CANDIDATE_STEP_HZ = 0.02
_DETECT_HARMONICS = 8  # harmonics that vote for a fundamental
_MAX_HARMONIC_HZ = 1_500.0  # the analysis copy is flat to about 1.6 kHz
_FLOOR_HALF_WIDTH_HZ = 12.0


@dataclass
class HumAnalysis:
    """What ``find_hum`` measured. Levels are dB; ``track_hz`` is per frame."""

    found: bool
    fundamental_hz: float
    prominence_db: float  # strongest harmonic line above its local floor
    level_dbfs: float  # RMS of the found harmonics together
    harmonics: list[int]  # harmonic numbers (1 = fundamental) that stand out
    harmonic_prominence_db: list[float]  # one per entry of ``harmonics``
    drift_hz: float  # peak-to-peak excursion of the track
    track_times_s: np.ndarray  # (frames,)
    track_hz: np.ndarray  # (frames,)

    def summary(self) -> dict[str, Any]:
        return {
            "hum_found": self.found,
            "hum_fundamental_hz": round(float(self.fundamental_hz), 3) if self.found else None,
            "hum_prominence_db": round(float(self.prominence_db), 2),
            "hum_level_dbfs": round(float(self.level_dbfs), 2) if self.found else None,
            "hum_harmonics": [int(k) for k in self.harmonics],
            "hum_drift_hz": round(float(self.drift_hz), 3) if self.found else None,
        }


def active_level_db(audio: np.ndarray, sample_rate_hz: int, frame_s: float = 0.05) -> float:
    """RMS level (dBFS) of the louder half of 50 ms frames: the level of the programme when it is on."""
    mono = np.asarray(audio, dtype=np.float64).mean(axis=0)
    frame = max(1, int(frame_s * sample_rate_hz))
    count = mono.size // frame
    if count == 0:
        return float(10 * np.log10(np.mean(mono**2) + 1e-30)) if mono.size else float("-inf")
    energy = np.mean(mono[: count * frame].reshape(count, frame) ** 2, axis=1)
    loud = energy[energy >= np.median(energy)]
    return float(10 * np.log10(np.mean(loud) + 1e-30))


def _analysis_copy(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mono mixdown at ANALYSIS_RATE_HZ. (samples,) float64."""
    mono = np.asarray(audio, dtype=np.float64).mean(axis=0)
    g = np.gcd(int(sample_rate_hz), ANALYSIS_RATE_HZ)
    return signal.resample_poly(mono, ANALYSIS_RATE_HZ // g, int(sample_rate_hz) // g)


def _frame_spectra_db(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectra in dB of 1 s frames. Returns (times_s (F,), freqs_hz (B,), spectra (F, B))."""
    frame = int(_FRAME_S * ANALYSIS_RATE_HZ)
    hop = int(_HOP_S * ANALYSIS_RATE_HZ)
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    starts = np.arange(0, x.size - frame + 1, hop)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[starts] * signal.windows.hann(frame)
    top_bin = int(np.ceil((_MAX_HARMONIC_HZ + 2 * _FLOOR_HALF_WIDTH_HZ) * _NFFT / ANALYSIS_RATE_HZ))
    spectra = np.abs(np.fft.rfft(frames, n=_NFFT, axis=1)[:, :top_bin]) ** 2
    freqs = np.arange(top_bin) * ANALYSIS_RATE_HZ / _NFFT
    times = (starts + frame / 2) / ANALYSIS_RATE_HZ
    return times, freqs, 10 * np.log10(spectra + 1e-30)


def _floor_db(spectra_db: np.ndarray, bin_hz: float) -> np.ndarray:
    """Local spectral floor: a running median over +-12 Hz, computed on 1 Hz cells for speed."""
    cell = int(round(1.0 / bin_hz))
    cells = spectra_db.shape[1] // cell
    coarse = spectra_db[:, : cells * cell].reshape(spectra_db.shape[0], cells, cell).mean(axis=2)
    coarse = ndimage.median_filter(coarse, size=(1, int(2 * _FLOOR_HALF_WIDTH_HZ) + 1), mode="nearest")
    idx = np.minimum(np.arange(spectra_db.shape[1]) // cell, cells - 1)
    return coarse[:, idx]


def _sample(values: np.ndarray, freqs_hz: np.ndarray | float, bin_hz: float) -> np.ndarray:
    """Linearly interpolate each frame's row of ``values`` (F, B) at ``freqs_hz`` (any shape)."""
    pos = np.clip(np.asarray(freqs_hz, dtype=np.float64) / bin_hz, 0, values.shape[-1] - 1.000001)
    lo = np.floor(pos).astype(int)
    frac = pos - lo
    return values[..., lo] * (1 - frac) + values[..., lo + 1] * frac


def find_hum(
    audio: np.ndarray,
    sample_rate_hz: int,
    min_hz: float = 45.0,
    max_hz: float = 65.0,
    threshold_db: float = 12.0,
    harmonic_threshold_db: float = 8.0,
    max_drift_hz: float = 1.5,
    max_harmonics: int = 25,
    min_level_db: float = -40.0,
    max_lone_harmonic: int = 3,
) -> HumAnalysis:
    """Look for mains hum with a fundamental in [min_hz, max_hz]. ``audio``: (channels, samples).

    Hum counts as found when its strongest line stands ``threshold_db`` above
    the local floor in most frames and the hum together is no more than
    ``-min_level_db`` below the programme's active level (a line 50 dB under
    the voice is inaudible and not worth a notch). A single line standing
    alone counts only up to harmonic ``max_lone_harmonic``.
    """
    x = _analysis_copy(audio, sample_rate_hz)
    times, freqs, spectra = _frame_spectra_db(x)
    bin_hz = freqs[1]
    prominence = spectra - _floor_db(spectra, bin_hz)

    candidates = np.arange(min_hz - max_drift_hz, max_hz + max_drift_hz + 1e-9, _CANDIDATE_STEP_HZ)
    ks = np.arange(1, _DETECT_HARMONICS + 1)
    # salience[f, c]: how much the harmonic comb at candidate c stands out in frame f.
    votes = np.clip(_sample(prominence, candidates[:, None] * ks[None, :], bin_hz), 0.0, 80.0)  # (F, C, K)
    salience = votes.sum(axis=2)
    # The global fundamental is the candidate whose comb is most persistent;
    # the median over frames ignores syllables that briefly line up with it.
    in_range = (candidates >= min_hz - _CANDIDATE_STEP_HZ / 2) & (candidates <= max_hz + _CANDIDATE_STEP_HZ / 2)
    persistent = np.median(salience, axis=0)
    persistent[~in_range] = -np.inf
    f0 = float(candidates[int(np.argmax(persistent))])

    # Per-frame track within +-max_drift_hz of f0.
    near = np.abs(candidates - f0) <= max_drift_hz
    local = salience[:, near]
    best = np.argmax(local, axis=1)
    # Parabolic refinement of each frame's peak.
    i = np.clip(best, 1, local.shape[1] - 2)
    rows = np.arange(local.shape[0])
    y0, y1, y2 = local[rows, i - 1], local[rows, i], local[rows, i + 1]
    denom = y0 - 2 * y1 + y2
    delta = np.where(np.abs(denom) > 1e-9, 0.5 * (y0 - y2) / np.where(denom == 0, 1, denom), 0.0)
    track = candidates[near][i] + np.clip(delta, -1, 1) * _CANDIDATE_STEP_HZ
    if track.size >= 5:
        track = ndimage.median_filter(track, size=5, mode="nearest")
    f0 = float(np.median(track))

    # Which harmonics stand out along the track, most of the time.
    k_all = np.arange(1, max(1, min(max_harmonics, int(_MAX_HARMONIC_HZ // max(f0, 1.0)))) + 1)
    along = np.stack([_sample(prominence[f], track[f] * k_all, bin_hz) for f in rows])  # (F, K)
    # A harmonic counts when it stands out in a quarter of the frames: speech
    # covers the weaker ones much of the time, but not in the pauses.
    per_harmonic = np.quantile(along, 0.75, axis=0)
    strongest = float(per_harmonic.max()) if per_harmonic.size else 0.0
    keep = per_harmonic >= harmonic_threshold_db
    found = strongest >= threshold_db and bool(keep.any())
    if found and keep.sum() == 1 and int(k_all[keep][0]) > max_lone_harmonic:
        # One steady line fits many fundamentals (270 Hz is the 6th harmonic
        # of 45 Hz and the 5th of 54 Hz), and mains hum shows at its
        # fundamental or its first harmonics (120 Hz rectifier hum is the 2nd).
        # Alone and that high, it is a tone of the programme, not hum.
        found = False
    harmonics = [int(k) for k in k_all[keep]] if found else []

    level = float("-inf")
    if found:
        # Harmonic line power: the spectrum at the line, corrected for the Hann window's gain.
        win = signal.windows.hann(int(_FRAME_S * ANALYSIS_RATE_HZ))
        power = 10 ** (np.stack([_sample(spectra[f], track[f] * np.array(harmonics), bin_hz) for f in rows]) / 10)
        amplitude_sq = np.median(power, axis=0) * 4 / win.sum() ** 2  # peak amplitude^2 per harmonic
        level = float(10 * np.log10(np.sum(amplitude_sq) / 2 + 1e-30))
        found = level - active_level_db(audio, sample_rate_hz) >= min_level_db
        if not found:
            harmonics = []
    return HumAnalysis(
        found=bool(found),
        fundamental_hz=f0,
        prominence_db=strongest,
        level_dbfs=level,
        harmonics=harmonics,
        harmonic_prominence_db=[float(p) for p in per_harmonic[keep]] if found else [],
        drift_hz=float(track.max() - track.min()) if found else 0.0,
        track_times_s=times,
        track_hz=track,
    )


def _frequency_track(times_s: np.ndarray, track_hz: np.ndarray, n: int, rate_hz: float) -> np.ndarray:
    """The frame-wise fundamental interpolated to every sample, held beyond the end frames. (n,)"""
    t = np.arange(n) / rate_hz
    if track_hz.size < 2:
        return np.full(n, float(track_hz[0]) if track_hz.size else 50.0)
    freq = CubicSpline(times_s, track_hz, bc_type="natural", extrapolate=False)(t)
    freq = np.where(t < times_s[0], track_hz[0], freq)
    return np.where(t > times_s[-1], track_hz[-1], freq)


def _demodulate(xd: np.ndarray, phase_d: np.ndarray, harmonics: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Complex amplitude of each harmonic along ``phase_d``. xd, phase_d: (nd,) -> (K, nd)."""
    base = xd[None, :] * np.exp(-1j * harmonics[:, None] * phase_d[None, :])
    # Normalising by the smoothed ones keeps the amplitude unbiased at the ends
    # of the file, where a recursive low-pass would start from a wrong state.
    norm = signal.fftconvolve(np.ones(xd.size), window, mode="same")
    return 2 * signal.fftconvolve(base, window[None, :], mode="same", axes=1) / norm[None, :]


def remove_hum(
    audio: np.ndarray,
    sample_rate_hz: int,
    analysis: HumAnalysis,
    harmonics: list[int],
    bandwidth_hz: float,
    refine_passes: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the tracked harmonics. Returns (cleaned, hum), both (channels, samples) float32.

    For a fixed ``analysis`` this is linear in ``audio``, so callers can
    measure what it does to the hum and to the programme separately.
    """
    channels, n = audio.shape
    if not harmonics or n == 0:
        return audio.astype(np.float32), np.zeros_like(audio, dtype=np.float32)
    rate = float(sample_rate_hz)
    # Demodulate on a decimated copy (the amplitudes vary at a few Hz at most)
    # and synthesise at the full rate.
    decimation = max(1, int(rate // ANALYSIS_RATE_HZ))
    top = max(harmonics) * float(np.max(analysis.track_hz))
    while decimation > 1 and top > 0.4 * rate / decimation:
        decimation -= 1
    rate_d = rate / decimation
    # Hann smoothing of the demodulated harmonic: its first spectral zero is at
    # bandwidth_hz, which is then the half-width of each notch.
    length = max(3, int(round(2 * rate_d / bandwidth_hz)) | 1)
    window = signal.windows.hann(length + 2)[1:-1]
    ks = np.asarray(harmonics, dtype=np.float64)

    decimated = np.stack(
        [signal.resample_poly(np.asarray(ch, dtype=np.float64), 1, decimation) if decimation > 1
         else np.asarray(ch, dtype=np.float64) for ch in audio]
    )  # (channels, nd)
    nd = decimated.shape[1]
    t_dec = np.arange(nd) * decimation
    freq = _frequency_track(analysis.track_times_s, analysis.track_hz, n, rate)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    # The frame track is good to a few hundredths of a hertz; harmonic k turns
    # that into k times the error. Each pass measures how fast the demodulated
    # harmonics still rotate (a phase-locked loop, run offline) and moves the
    # track by that much, weighting harmonics by their power.
    mono = decimated.mean(axis=0)
    for _ in range(refine_passes):
        amp = _demodulate(mono, phase[t_dec], ks, window)
        step = amp[:, 1:] * np.conj(amp[:, :-1])
        weight = np.abs(step)
        offset = np.angle(step) * rate_d / (2 * np.pi * ks[:, None])  # Hz, (K, nd-1)
        correction = (weight * offset).sum(axis=0) / np.maximum(weight.sum(axis=0), 1e-30)
        correction = np.concatenate([correction[:1], correction])
        freq = freq + np.interp(np.arange(n), t_dec, correction)
        phase = 2 * np.pi * np.cumsum(freq) / rate

    hum = np.zeros((channels, n), dtype=np.float64)
    t_full = np.arange(n)
    for c in range(channels):
        amp = _demodulate(decimated[c], phase[t_dec], ks, window)
        for i, k in enumerate(harmonics):
            amp_full = np.interp(t_full, t_dec, amp[i].real) + 1j * np.interp(t_full, t_dec, amp[i].imag)
            hum[c] += np.real(amp_full * np.exp(1j * k * phase))
    return (audio - hum).astype(np.float32), hum.astype(np.float32)


@dataclass
class Dehum(Stage):
    """Remove mains hum (fundamental ``min_hz``..``max_hz``) and its harmonics.

    ``fundamental_hz`` = 0 searches the range; a value pins the search to
    +-``max_drift_hz`` around it. ``harmonics`` = 0 removes every harmonic
    that stands ``harmonic_threshold_db`` above the floor (up to 1.5 kHz),
    and always harmonics 1..``min_harmonics``; a value removes harmonics
    1..harmonics. Nothing is removed unless some
    line stands ``threshold_db`` above its local floor in most frames.
    """

    name = "dehum"
    fundamental_hz: float = 0.0
    min_hz: float = 45.0
    max_hz: float = 65.0
    max_drift_hz: float = 1.5
    harmonics: int = 0
    bandwidth_hz: float = 2.0
    threshold_db: float = 12.0
    harmonic_threshold_db: float = 8.0
    min_level_db: float = -40.0
    min_harmonics: int = 6

    def __post_init__(self) -> None:
        if self.fundamental_hz != 0.0:
            check_range("fundamental_hz", self.fundamental_hz, 40.0, 70.0)
        check_range("min_hz", self.min_hz, 40.0, 70.0)
        check_range("max_hz", self.max_hz, self.min_hz, 70.0)
        check_range("max_drift_hz", self.max_drift_hz, 0.0, 5.0)
        check_range("harmonics", self.harmonics, 0, 30)
        check_range("bandwidth_hz", self.bandwidth_hz, 0.2, 10.0)
        check_range("threshold_db", self.threshold_db, 3.0, 60.0)
        check_range("harmonic_threshold_db", self.harmonic_threshold_db, 3.0, 60.0)
        check_range("min_level_db", self.min_level_db, -80.0, 0.0)
        check_range("min_harmonics", self.min_harmonics, 1, 30)

    def analyse(self, audio: np.ndarray, sample_rate_hz: int) -> HumAnalysis:
        low, high = self.min_hz, self.max_hz
        if self.fundamental_hz:
            low = high = self.fundamental_hz
        return find_hum(
            audio,
            sample_rate_hz,
            min_hz=low,
            max_hz=high,
            threshold_db=self.threshold_db,
            harmonic_threshold_db=self.harmonic_threshold_db,
            max_drift_hz=self.max_drift_hz,
            min_level_db=self.min_level_db,
        )


    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        analysis = self.analyse(audio, sample_rate_hz)
        findings = analysis.summary()
        findings["_analysis"] = analysis
        return findings

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        analysis: HumAnalysis = findings["_analysis"]
        if not analysis.found or audio.shape[1] == 0:
            return StageOutput(audio, {"changed": False})
        if self.harmonics:
            harmonics = list(range(1, self.harmonics + 1))
        else:
            # Mains hum always has its low harmonics; speech can hide the
            # weaker ones from detection, and a 2 x bandwidth_hz notch where
            # a line is missing costs next to nothing.
            harmonics = sorted(set(analysis.harmonics) | set(range(1, self.min_harmonics + 1)))
        nyquist_safe = [k for k in harmonics if k * analysis.fundamental_hz < 0.45 * sample_rate_hz]
        cleaned, hum = remove_hum(audio, sample_rate_hz, analysis, nyquist_safe, self.bandwidth_hz)
        removed_db = 10 * np.log10(np.mean(hum.astype(np.float64) ** 2) + 1e-30)
        return StageOutput(
            cleaned,
            {"changed": True, "removed_harmonics": nyquist_safe, "removed_level_dbfs": round(float(removed_db), 2)},
        )
