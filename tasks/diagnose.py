"""Per-item diagnosis: what is wrong with a recording, measured before anything is repaired.

The ``auto`` preset (``presets.stage_params_for``) sets each stage from this;
the run stores ``Diagnosis.to_dict()`` in the catalog and ``archivox
diagnose FILE`` prints ``Diagnosis.format()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, signal

from archivox.tasks.chain import as_channels_first
from archivox.tasks.declick import Declick
from archivox.tasks.declip import clipped_mask
from archivox.tasks.dehum import active_level_db, find_hum

_FRAME_S = 0.05
_NOISE_PERCENTILE = 10
_BANDWIDTH_BELOW_CORE_DB = 50.0  # the edge: where the spectrum falls this far under the speech core
_CLIFF_DB = 25.0  # a drop this steep within 1 kHz above the edge is a filter, not the voice
# Lossy encoders low-pass full-band sources between about 10.5 kHz (MP3 at
# 64 kbit/s) and 21 kHz (AAC, Opus at 128 kbit/s and up). A recording made
# at a lower rate and resampled ends at its old Nyquist frequency instead;
# measured this way (50 dB under the speech core, ffmpeg's resampler) that
# edge lies 1.06-1.18 times above 8, 11.025, 12 or 16 kHz, which overlaps
# AAC's and Vorbis's usual 18 kHz cut, so a cut there proves nothing alone.
_LOSSY_EDGE_RANGE_HZ = (10_000.0, 21_800.0)
_RESAMPLED_NYQUISTS_HZ = (8_000.0, 11_025.0, 12_000.0, 16_000.0)
_RESAMPLED_EDGE_RATIO = (1.06, 1.18)
# Near 18 kHz the fall over the last kHz before the edge decides: ffmpeg's
# resampler from 32 kHz measured 12-21 dB, AAC and Vorbis cuts 24-41 dB
# (some AAC at 96 kbit/s less; its spectral holes give it away instead).
_ENCODER_FALL_DB = 23.0
# Transform codecs quantise whole bands of a frame to zero where the signal
# is masked, which leaves holes in the short-time spectrum far deeper than
# a noise-like spectrum has: 30 dB under the median of the 9 bins x 3
# frames around it, a chi-square bin falls that low 0.07 % of the time
# (lossless speech and noise measured 0.03-0.16 %, MP3 and Vorbis 0.1-1.7 %
# in the top half of their band). Opus and AAC fill such holes with noise.
_HOLE_DEPTH_DB = 30.0
_HOLES_LOSSY = 0.002


@dataclass
class Diagnosis:
    """What a recording needs. Levels in dBFS or dB; ``None`` where not measurable."""

    duration_s: float
    sample_rate_hz: int
    channels: int
    dc_offset_dbfs: float | None
    hum_found: bool
    hum_fundamental_hz: float | None
    hum_level_dbfs: float | None
    hum_harmonics: list[int] = field(default_factory=list)
    hum_drift_hz: float | None = None
    clicks_per_minute: float = 0.0
    clipped_fraction: float = 0.0
    noise_floor_dbfs: float | None = None
    active_level_dbfs: float | None = None
    speech_snr_db: float | None = None
    effective_bandwidth_hz: float | None = None
    spectral_holes_fraction: float | None = None
    lossy_source_likely: bool = False
    lossy_evidence: str = ""
    # The rate the recording was made at, where it is not the rate analysed
    # (``sample_rate_hz``): clipping and clicks are then counted at this one.
    source_rate_hz: int | None = None

    def _rates(self) -> str:
        if self.source_rate_hz in (None, self.sample_rate_hz):
            return f"{self.sample_rate_hz} Hz"
        return f"recorded at {self.source_rate_hz} Hz, analysed at {self.sample_rate_hz} Hz"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: no numpy scalars, no infinities (they become None)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, (np.floating, float)):
                value = float(value)
                value = round(value, 6) if math.isfinite(value) else None
            elif isinstance(value, np.integer):
                value = int(value)
            elif isinstance(value, (np.bool_, bool)):
                value = bool(value)
            elif isinstance(value, list):
                value = [int(v) for v in value]
            out[key] = value
        return out

    def format(self) -> str:
        def db(v: float | None, unit: str = "dBFS") -> str:
            return "n/a" if v is None or not math.isfinite(v) else f"{v:.1f} {unit}"

        if self.hum_found:
            hum = (f"{self.hum_fundamental_hz:.2f} Hz at {db(self.hum_level_dbfs)}, harmonics "
                   f"{', '.join(map(str, self.hum_harmonics))}; drift {self.hum_drift_hz:.2f} Hz")
        else:
            hum = "none found (45-65 Hz)"
        lines = [
            f"duration          {self.duration_s:.2f} s, {self._rates()}, {self.channels} channel(s)",
            f"DC offset         {db(self.dc_offset_dbfs)}",
            f"hum               {hum}",
            f"clicks            {self.clicks_per_minute:.1f} per minute",
            f"clipping          {100 * self.clipped_fraction:.3f} % of samples",
            f"noise floor       {db(self.noise_floor_dbfs)}",
            f"active level      {db(self.active_level_dbfs)}",
            f"speech SNR        {db(self.speech_snr_db, 'dB')}",
            f"bandwidth         {'n/a' if self.effective_bandwidth_hz is None else f'{self.effective_bandwidth_hz:.0f} Hz'}",
            f"lossy source      {'likely' if self.lossy_source_likely else 'no sign'}"
            + (f" ({self.lossy_evidence})" if self.lossy_evidence else ""),
        ]
        return "\n".join(lines)


def _frame_levels_db(mono: np.ndarray, rate_hz: int) -> np.ndarray:
    frame = max(1, int(_FRAME_S * rate_hz))
    count = mono.size // frame
    if count == 0:
        return np.zeros(0)
    energy = np.mean(mono[: count * frame].reshape(count, frame) ** 2, axis=1)
    return 10 * np.log10(energy + 1e-20)


def bandwidth_and_cliff(mono: np.ndarray, rate_hz: int) -> tuple[float | None, float]:
    """(effective bandwidth in Hz, dB the spectrum falls in the 1 kHz above it)."""
    edge, cliff, _ = band_edge(mono, rate_hz)
    return edge, cliff


def band_edge(mono: np.ndarray, rate_hz: int) -> tuple[float | None, float, float]:
    """(effective bandwidth in Hz, dB the spectrum falls in the 1 kHz above it, dB it falls in the 1 kHz below it).

    mono: (n,). The fall below the edge tells an encoder's brick wall (over
    24 dB) from a resampler's anti-alias roll-off (12-21 dB measured).
    """
    if mono.size < 1024:
        return None, 0.0, 0.0
    freqs, psd = signal.welch(mono, fs=rate_hz, nperseg=min(4096, mono.size))
    level = 10 * np.log10(psd + 1e-30)
    core = (freqs >= 500) & (freqs < 4000)
    if not core.any():
        return None, 0.0, 0.0
    reference = float(np.median(level[core]))
    above = np.flatnonzero(level >= reference - _BANDWIDTH_BELOW_CORE_DB)
    if above.size == 0:
        return None, 0.0, 0.0
    edge = float(freqs[above[-1]])
    beyond = (freqs > edge) & (freqs <= edge + 1000)
    cliff = float(level[above[-1]] - level[beyond].min()) if beyond.any() else 0.0

    def around(f: float) -> float:
        near = np.abs(freqs - f) <= 125
        return float(np.median(level[near])) if near.any() else float("nan")

    fall = around(edge - 1000) - around(edge)
    return edge, cliff, fall if np.isfinite(fall) else 0.0


def spectral_holes_fraction(mono: np.ndarray, rate_hz: int, bandwidth_hz: float | None) -> float | None:
    """Fraction of short-time spectrum bins ``_HOLE_DEPTH_DB`` under their neighbourhood's median.

    mono: (n,). Counted over the upper half of the occupied band (1 kHz at
    least, up to 95 % of ``bandwidth_hz``), where encoders zero bands first,
    and over frames within 30 dB of the loudest (silence is all holes).
    ~21 ms frames, half overlapping. None for under half a second of audio.
    """
    frame = 1 << int(round(np.log2(0.021 * rate_hz)))
    if mono.size < max(rate_hz // 2, 8 * frame):
        return None
    top = min(bandwidth_hz or rate_hz / 2, 0.95 * rate_hz / 2)
    freqs, _, spectra = signal.stft(mono, fs=rate_hz, nperseg=frame, noverlap=frame // 2, boundary=None, padded=False)
    power = np.abs(spectra) ** 2
    frame_db = 10 * np.log10(power.sum(axis=0) + 1e-30)
    active = frame_db > np.percentile(frame_db, 95) - 30
    band = (freqs >= max(1000.0, 0.5 * top)) & (freqs <= 0.95 * top)
    if band.sum() < 9 or active.sum() < 3:
        return None
    level = 10 * np.log10(power[np.ix_(band, active)] + 1e-30)
    around = ndimage.median_filter(level, size=(9, 3), mode="nearest")
    return float(np.mean(level < around - _HOLE_DEPTH_DB))


def lossy_verdict(bandwidth_hz: float | None, cliff_db: float, fall_db: float, holes: float | None,
                  rate_hz: int) -> tuple[bool, str]:
    """(lossy source likely, the evidence in words) from the band edge, how steeply the spectrum
    falls on either side of it (``band_edge``) and the spectral holes (``spectral_holes_fraction``)."""
    evidence = []
    lossy = False
    if holes is not None and holes >= _HOLES_LOSSY:
        lossy = True
        evidence.append(f"{100 * holes:.2f} % of the upper band's spectrum bins are holes {_HOLE_DEPTH_DB:.0f} dB deep, "
                        "as a transform codec leaves")
    if bandwidth_hz is not None and bandwidth_hz < 0.95 * rate_hz / 2 and cliff_db >= _CLIFF_DB:
        low, high = _LOSSY_EDGE_RANGE_HZ
        resampled = [f for f in _RESAMPLED_NYQUISTS_HZ
                     if _RESAMPLED_EDGE_RATIO[0] <= bandwidth_hz / f <= _RESAMPLED_EDGE_RATIO[1]]
        brick_wall = fall_db >= _ENCODER_FALL_DB and 16_000.0 in resampled
        if low <= bandwidth_hz <= high and (not resampled or brick_wall):
            lossy = True
            evidence.append(f"spectrum cut off sharply at {bandwidth_hz:.0f} Hz ({cliff_db:.0f} dB within 1 kHz), "
                            "as encoders do")
        elif resampled:
            evidence.append(f"band-limited at {bandwidth_hz:.0f} Hz, as a recording made at "
                            f"{2 * resampled[0] / 1000:g} kHz is"
                            + (" (or through an encoder's 18 kHz cut too gradual to tell apart)" if resampled[0] == 16_000.0 else ""))
        else:
            evidence.append(f"band-limited at {bandwidth_hz:.0f} Hz (a lower-rate source or a telephone/radio path)")
    return lossy, "; ".join(evidence)


def lossy_source(mono: np.ndarray, rate_hz: int) -> tuple[bool, str, float | None, float | None]:
    """(lossy source likely, evidence, effective bandwidth in Hz, spectral holes fraction) of mono (n,).

    What ``diagnose`` reports. Reliable for sources recorded at 32 kHz or
    more (the encoder's cut shows); for a 16 or 22.05 kHz source only the
    spectral holes of MP3 and Vorbis at low rates are left to see.
    """
    bandwidth, cliff, fall = band_edge(mono, rate_hz)
    holes = spectral_holes_fraction(mono, rate_hz, bandwidth)
    lossy, evidence = lossy_verdict(bandwidth, cliff, fall, holes, rate_hz)
    return lossy, evidence, bandwidth, holes


def diagnose(audio: np.ndarray, sample_rate_hz: int) -> Diagnosis:
    """Measure ``audio`` (channels, samples) or (samples,), float in [-1, 1]."""
    audio = as_channels_first(np.asarray(audio, dtype=np.float32))
    channels, n = audio.shape
    mono = audio.astype(np.float64).mean(axis=0)
    offsets = np.abs(audio.astype(np.float64).mean(axis=1)) if n else np.zeros(channels)
    dc = float(20 * np.log10(offsets.max())) if n and offsets.max() > 0 else None

    hum = find_hum(audio, sample_rate_hz) if n else None
    # Counting needs only the first search: on all 194 corpus speech files with
    # 3 clicks/s planted, it gave the rate within 20 % as often as the
    # thorough search (193/194 each) at twice its speed.
    clicks = (Declick(thorough=False).detect(mono[None, :].astype(np.float32), sample_rate_hz) if n
              else {"clicks_per_minute": 0.0})
    clipped = max((clipped_mask(ch.astype(np.float64))[0].mean() for ch in audio), default=0.0) if n else 0.0

    levels = _frame_levels_db(mono - mono.mean(), sample_rate_hz)
    noise = float(np.percentile(levels, _NOISE_PERCENTILE)) if levels.size else None
    active = active_level_db(audio - audio.mean(axis=1, keepdims=True), sample_rate_hz) if n else None
    snr = active - noise if active is not None and noise is not None else None

    lossy, evidence, bandwidth, holes = lossy_source(mono, sample_rate_hz)

    return Diagnosis(
        duration_s=n / sample_rate_hz,
        sample_rate_hz=int(sample_rate_hz),
        channels=channels,
        dc_offset_dbfs=dc,
        hum_found=bool(hum and hum.found),
        hum_fundamental_hz=float(hum.fundamental_hz) if hum and hum.found else None,
        hum_level_dbfs=float(hum.level_dbfs) if hum and hum.found else None,
        hum_harmonics=list(hum.harmonics) if hum and hum.found else [],
        hum_drift_hz=float(hum.drift_hz) if hum and hum.found else None,
        clicks_per_minute=float(clicks["clicks_per_minute"]),
        clipped_fraction=float(clipped),
        noise_floor_dbfs=noise,
        active_level_dbfs=active,
        speech_snr_db=snr,
        effective_bandwidth_hz=bandwidth,
        spectral_holes_fraction=holes,
        lossy_source_likely=lossy,
        lossy_evidence=evidence,
    )


def diagnose_file(path: str | Path) -> Diagnosis:
    """Diagnose a file soundfile can read (the flow routes media through ffmpeg first)."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return diagnose(data.T, int(rate))
