"""Diagnosis and presets: planted hum and clicks are measured; clean speech shows no hum."""

from __future__ import annotations

import json

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.chain import build_chain
from archivox.tasks.diagnose import diagnose
from archivox.tasks.loudness import integrated_loudness_lufs, true_peak_dbtp
from archivox.tasks.presets import PRESETS, stage_params_for, stages_for
from signals import RATE_HZ, clicks, clip_to_fraction, hum, load_speech, speech_like


@pytest.mark.parametrize("fundamental_hz", [47.3, 50.0, 59.6, 62.5])
def test_hum_frequency_within_half_a_hertz(fundamental_hz: float) -> None:
    d = diagnose(speech_like(6.0, seed=7) + hum(fundamental_hz, 6.0, level_db=-40.0), RATE_HZ)
    assert d.hum_found
    assert abs(d.hum_fundamental_hz - fundamental_hz) < 0.5
    assert 1 in d.hum_harmonics  # the second may hide under the voice's own pitch


def test_click_rate_within_20_percent_and_clipping_measured() -> None:
    duration = 10.0
    planted, positions = clicks(duration, 4.0, amplitude=0.3, seed=8)
    d = diagnose(speech_like(duration, seed=8) + planted, RATE_HZ)
    true_rate = len(positions) / duration * 60
    assert abs(d.clicks_per_minute - true_rate) <= 0.2 * true_rate
    assert d.clipped_fraction == 0.0
    clipped = diagnose(clip_to_fraction(speech_like(duration, seed=8), 0.01), RATE_HZ)
    assert clipped.clipped_fraction == pytest.approx(0.01, abs=0.003)


def test_report_is_json_safe_and_readable() -> None:
    d = diagnose(speech_like(3.0), RATE_HZ)
    text = json.dumps(d.to_dict())
    assert "Infinity" not in text and "NaN" not in text
    assert "hum" in d.format() and "none found" in d.format()
    assert not d.hum_found and d.dc_offset_dbfs is not None


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["cathy_arctic_a0014_1592748281.wav", "vctk_p226_019.wav",
                                  "librispeech_1688-142285-0008.flac"])
def test_corpus_clean_speech_has_no_hum(corpus, name: str) -> None:
    d = diagnose(load_speech(corpus / "speech_clean" / name), RATE_HZ)
    assert not d.hum_found
    assert d.clicks_per_minute <= 30.0  # at most one in a few seconds of real speech


@pytest.mark.corpus
def test_corpus_planted_hum_and_clicks_measured(corpus) -> None:
    speech = load_speech(corpus / "speech_clean" / "librispeech_2412-153948-0000.flac")
    duration = speech.shape[1] / RATE_HZ
    planted, positions = clicks(duration, 2.0, amplitude=0.5 * float(np.abs(speech).max()), seed=9)
    d = diagnose(speech + hum(50.7, duration, level_db=-45.0) + planted, RATE_HZ)
    assert d.hum_found and abs(d.hum_fundamental_hz - 50.7) < 0.5
    true_rate = len(positions) / duration * 60
    assert abs(d.clicks_per_minute - true_rate) <= 0.2 * true_rate
    # Clicks are broadband; the clean 16 kHz source itself ends at 8 kHz.
    plain = diagnose(speech, RATE_HZ)
    assert plain.effective_bandwidth_hz is not None and 7000 < plain.effective_bandwidth_hz < 9500


def test_presets_build_chains_and_auto_follows_the_diagnosis() -> None:
    for preset in PRESETS:
        if preset == "auto":
            continue
        build_chain(stages_for(preset), params=stage_params_for(preset))
    audio = speech_like(4.0, seed=10) + hum(60.0, 4.0, level_db=-35.0)
    d = diagnose(audio, RATE_HZ)
    params = stage_params_for("auto", d)
    assert abs(params["dehum"]["fundamental_hz"] - 60.0) < 0.5
    names = stages_for("auto", d)
    assert "dehum" in names and "declip" not in names
    result = build_chain(names, params=params)(audio)
    assert abs(integrated_loudness_lufs(result.audio, RATE_HZ) - (-16.0)) < 0.5
    assert true_peak_dbtp(result.audio) <= -1.0


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="music-safe"):
        stage_params_for("loudest")
    with pytest.raises(ConfigError, match="diagnosis"):
        stage_params_for("auto", None)
