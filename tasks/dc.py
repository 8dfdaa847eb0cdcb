"""DC offset removal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import signal

from archivox.tasks.chain import Stage, StageOutput, check_range


@dataclass
class DCOffset(Stage):
    """Remove a constant offset and sub-audible drift.

    ``cutoff_hz`` is the corner of a 2nd-order high-pass run forwards and
    backwards (zero phase), so drift from old A/D converters and tape goes
    while the speech band is untouched. ``threshold_db`` is the offset below
    which the stage leaves the audio alone.
    """

    name = "dc"
    cutoff_hz: float = 10.0
    threshold_db: float = -80.0

    def __post_init__(self) -> None:
        check_range("cutoff_hz", self.cutoff_hz, 1.0, 40.0)
        check_range("threshold_db", self.threshold_db, -140.0, 0.0)

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        offset = np.mean(audio, axis=1, dtype=np.float64) if audio.shape[1] else np.zeros(audio.shape[0])
        peak = float(np.max(np.abs(offset))) if offset.size else 0.0
        return {"offset_db": 20 * np.log10(peak) if peak > 0 else -np.inf, "offset": [float(o) for o in offset]}

    def repair(self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]) -> StageOutput:
        if findings["offset_db"] < self.threshold_db or audio.shape[1] == 0:
            return StageOutput(audio, {"changed": False})
        centred = audio - np.asarray(findings["offset"], dtype=np.float32)[:, None]
        sos = signal.butter(2, self.cutoff_hz, btype="highpass", fs=sample_rate_hz, output="sos")
        # sosfiltfilt needs a few filter lengths of signal; very short clips
        # only get the mean removed.
        if centred.shape[1] > 64:
            centred = signal.sosfiltfilt(sos, centred, axis=1)
        return StageOutput(centred.astype(np.float32), {"changed": True})
