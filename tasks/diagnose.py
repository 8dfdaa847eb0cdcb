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
from scipy import signal

from archivox.tasks.chain import as_channels_first
from archivox.tasks.declick import Declick
from archivox.tasks.declip import clipped_mask
from archivox.tasks.dehum import active_level_db, find_hum

_FRAME_S = 0.05
_NOISE_PERCENTILE = 10
_BANDWIDTH_BELOW_CORE_DB = 50.0  # the edge: where the spectrum falls this far under the speech core
_CLIFF_DB = 25.0  # a drop this steep within 1 kHz above the edge is a filter, not the voice
# Encoders low-pass at these frequencies; resamplers from 16/22.05/32 kHz cut
# at 8, 11.025 and 16 kHz, so only 16 kHz is ambiguous.
_LOSSY_EDGE_RANGE_HZ = (12_500.0, 20_500.0)


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
    lossy_source_likely: bool = False
    lossy_evidence: str = ""

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
            f"duration          {self.duration_s:.2f} s, {self.sample_rate_hz} Hz, {self.channels} channel(s)",
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
    if mono.size < 1024:
        return None, 0.0
    freqs, psd = signal.welch(mono, fs=rate_hz, nperseg=min(4096, mono.size))
    level = 10 * np.log10(psd + 1e-30)
    core = (freqs >= 500) & (freqs < 4000)
    if not core.any():
        return None, 0.0
    reference = float(np.median(level[core]))
    above = np.flatnonzero(level >= reference - _BANDWIDTH_BELOW_CORE_DB)
    if above.size == 0:
        return None, 0.0
    edge = float(freqs[above[-1]])
    beyond = (freqs > edge) & (freqs <= edge + 1000)
    cliff = float(level[above[-1]] - level[beyond].min()) if beyond.any() else 0.0
    return edge, cliff


def diagnose(audio: np.ndarray, sample_rate_hz: int) -> Diagnosis:
    """Measure ``audio`` (channels, samples) or (samples,), float in [-1, 1]."""
    audio = as_channels_first(np.asarray(audio, dtype=np.float32))
    channels, n = audio.shape
    mono = audio.astype(np.float64).mean(axis=0)
    offsets = np.abs(audio.astype(np.float64).mean(axis=1)) if n else np.zeros(channels)
    dc = float(20 * np.log10(offsets.max())) if n and offsets.max() > 0 else None

    hum = find_hum(audio, sample_rate_hz) if n else None
    clicks = Declick().detect(mono[None, :].astype(np.float32), sample_rate_hz) if n else {"clicks_per_minute": 0.0}
    clipped = max((clipped_mask(ch.astype(np.float64))[0].mean() for ch in audio), default=0.0) if n else 0.0

    levels = _frame_levels_db(mono - mono.mean(), sample_rate_hz)
    noise = float(np.percentile(levels, _NOISE_PERCENTILE)) if levels.size else None
    active = active_level_db(audio - audio.mean(axis=1, keepdims=True), sample_rate_hz) if n else None
    snr = active - noise if active is not None and noise is not None else None

    bandwidth, cliff = bandwidth_and_cliff(mono, sample_rate_hz)
    lossy, evidence = False, ""
    if bandwidth is not None and bandwidth < 0.95 * sample_rate_hz / 2:
        low, high = _LOSSY_EDGE_RANGE_HZ
        if cliff >= _CLIFF_DB and low <= bandwidth <= high:
            lossy = True
            evidence = f"spectrum cut off sharply at {bandwidth:.0f} Hz ({cliff:.0f} dB within 1 kHz), as encoders do"
        elif cliff >= _CLIFF_DB:
            evidence = f"band-limited at {bandwidth:.0f} Hz (a lower-rate source or a telephone/radio path)"

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
        lossy_source_likely=lossy,
        lossy_evidence=evidence,
    )


def diagnose_file(path: str | Path) -> Diagnosis:
    """Diagnose a file soundfile can read (the flow routes media through ffmpeg first)."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return diagnose(data.T, int(rate))
