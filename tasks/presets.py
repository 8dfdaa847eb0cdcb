"""Named restoration presets: per-stage settings, fixed or derived from a diagnosis.

``stage_params_for(preset, diagnosis)`` returns ``{stage name: keyword
arguments}`` for ``build_chain(names, params=...)``. ``stages_for`` returns
the stages worth running; every stage's repair is a no-op when its own
detect finds nothing, so running more is safe, only slower.

- ``speech``: spoken word for listening and transcription, -16 LUFS.
- ``music-safe``: only what cannot be mistaken for music (narrow notches,
  loud clicks, no shelf), EBU R128 -23 LUFS.
- ``gentle``: lighter touch everywhere, -23 LUFS.
- ``auto``: ``speech`` adjusted to what the diagnosis found.
"""

from __future__ import annotations

import copy
from typing import Any

from archivox.errors import ConfigError
from archivox.tasks.chain import STAGE_ORDER
from archivox.tasks.diagnose import Diagnosis

_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "speech": {
        "dc": {"cutoff_hz": 10.0},
        "declick": {"threshold_db": 34.0, "peak_ratio_db": 6.0},
        "dehum": {"bandwidth_hz": 2.0, "max_drift_hz": 1.5},
        "declip": {},
        "eq": {"highpass_hz": 70.0, "shelf_hz": 8000.0, "shelf_gain_db": 1.5},
        "loudness": {"target_lufs": -16.0, "ceiling_dbtp": -1.0},
    },
    "music-safe": {
        "dc": {"cutoff_hz": 5.0},
        "declick": {"threshold_db": 40.0, "peak_ratio_db": 12.0},
        "dehum": {"bandwidth_hz": 1.0, "max_drift_hz": 0.5, "threshold_db": 18.0},
        "declip": {},
        "eq": {"highpass_hz": 0.0, "shelf_gain_db": 0.0},
        "loudness": {"target_lufs": -23.0, "ceiling_dbtp": -1.0},
    },
    "gentle": {
        "dc": {"cutoff_hz": 10.0},
        "declick": {"threshold_db": 38.0, "peak_ratio_db": 9.0},
        "dehum": {"bandwidth_hz": 1.5, "threshold_db": 15.0},
        "declip": {},
        "eq": {"highpass_hz": 50.0, "shelf_hz": 8000.0, "shelf_gain_db": 1.0},
        "loudness": {"target_lufs": -23.0, "ceiling_dbtp": -1.0},
    },
}
PRESETS: tuple[str, ...] = ("auto", *_PRESETS)


def _check(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets are {', '.join(PRESETS)}")


def stage_params_for(preset: str, diagnosis: Diagnosis | None = None) -> dict[str, dict[str, Any]]:
    """Keyword arguments per stage name for ``preset``; ``auto`` needs a diagnosis."""
    _check(preset)
    if preset != "auto":
        return copy.deepcopy(_PRESETS[preset])
    if diagnosis is None:
        raise ConfigError("preset 'auto' needs a diagnosis; run diagnose(audio, rate) first or pick "
                          f"one of {', '.join(p for p in PRESETS if p != 'auto')}")
    params = copy.deepcopy(_PRESETS["speech"])
    if diagnosis.hum_found and diagnosis.hum_fundamental_hz:
        # Pin the search to what was found; the stage still tracks drift.
        params["dehum"].update({
            "fundamental_hz": round(min(max(diagnosis.hum_fundamental_hz, 40.0), 70.0), 3),
            "max_drift_hz": round(min(5.0, max(0.5, (diagnosis.hum_drift_hz or 0.0) + 0.5)), 2),
        })
    # Heavy crackle needs a more sensitive search; a few clicks a minute do not.
    if diagnosis.clicks_per_minute > 600:
        params["declick"].update({"threshold_db": 30.0})
    # A recording with no content above the shelf gets no shelf (the stage
    # would skip it too); one with a low noise floor needs no extra high-pass.
    if diagnosis.effective_bandwidth_hz is not None and diagnosis.effective_bandwidth_hz < 9000:
        params["eq"]["shelf_gain_db"] = 0.0
    return params


def stages_for(preset: str, diagnosis: Diagnosis | None = None) -> list[str]:
    """The stages worth running, in chain order. Named presets run them all (each skips what it does not find)."""
    _check(preset)
    names = [n for n in STAGE_ORDER if n != "denoise"]
    if preset != "auto" or diagnosis is None:
        return names
    skip = set()
    if diagnosis.dc_offset_dbfs is None or diagnosis.dc_offset_dbfs < -80.0:
        skip.add("dc")
    if not diagnosis.hum_found:
        skip.add("dehum")
    if diagnosis.clicks_per_minute == 0:
        skip.add("declick")
    if diagnosis.clipped_fraction < 1e-4:
        skip.add("declip")
    return [n for n in names if n not in skip]
