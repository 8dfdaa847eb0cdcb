"""Dehum: the planted hum's lines drop by >= 30 dB; speech without hum is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.dehum import Dehum, remove_hum
from signals import RATE_HZ, hum, hum_line_db, load_speech, si_sdr_db, speech_like, tone

HARMONICS = range(1, 7)  # the fundamental and the next five


def _line_drops(programme: np.ndarray, fundamental_hz: float, drift_hz: float) -> tuple[list[float], float, Dehum]:
    """Per-harmonic drop of the hum through the stage, and the programme's SI-SDR through the same filter."""
    duration = programme.shape[1] / RATE_HZ
    planted = hum(fundamental_hz, duration, level_db=-30.0, drift_hz=drift_hz)
    stage = Dehum()
    mixture = programme + planted
    analysis = stage.analyse(mixture, RATE_HZ)
    assert analysis.found
    # A drifting hum has no single frequency: compare with its mean over the clip.
    t = np.arange(programme.shape[1]) / RATE_HZ
    mean_hz = fundamental_hz + drift_hz * np.mean(np.sin(2 * np.pi * 0.1 * t))
    assert abs(analysis.fundamental_hz - mean_hz) < 0.5
    harmonics = sorted(set(analysis.harmonics) | set(range(1, stage.min_harmonics + 1)))  # as Dehum.repair
    # For a fixed analysis the filter is linear: run hum and programme through
    # it separately to see what it does to each.
    hum_left, _ = remove_hum(planted, RATE_HZ, analysis, harmonics, stage.bandwidth_hz)
    programme_left, _ = remove_hum(programme, RATE_HZ, analysis, harmonics, stage.bandwidth_hz)
    drops = [hum_line_db(planted, fundamental_hz, k, drift_hz) - hum_line_db(hum_left, fundamental_hz, k, drift_hz)
             for k in HARMONICS]
    # The whole stage on the mixture removes the same hum.
    out = stage(mixture).audio
    residual = out - programme
    assert hum_line_db(residual, fundamental_hz, 1, drift_hz) < hum_line_db(planted, fundamental_hz, 1, drift_hz) - 30
    return drops, si_sdr_db(programme_left, programme), stage


@pytest.mark.parametrize("fundamental_hz, drift_hz", [(50.0, 0.0), (60.0, 0.0), (50.0, 1.0), (60.0, 1.0)])
def test_hum_lines_drop_30_db_on_generated_speech(fundamental_hz: float, drift_hz: float) -> None:
    drops, _, _ = _line_drops(speech_like(10.0, seed=1), fundamental_hz, drift_hz)
    assert min(drops) >= 30.0, drops


def test_no_hum_means_no_change() -> None:
    clean = speech_like(6.0, seed=2)
    out = Dehum()(clean)
    assert out.metrics["changed"] is False
    assert out.metrics["found_hum_found"] is False
    np.testing.assert_array_equal(out.audio, clean)


def test_a_lone_high_tone_is_not_hum() -> None:
    # 270 Hz is the 6th harmonic of 45 Hz and the 5th of 54 Hz: alone, it is a
    # tone of the programme (a whine, a held note), and notching it would cut it.
    programme = speech_like(8.0, seed=3) + tone(270.0, 8.0, level_db=-40.0)
    out = Dehum()(programme)
    assert out.metrics["found_hum_found"] is False
    np.testing.assert_array_equal(out.audio, programme)


def test_rectifier_hum_without_its_fundamental_is_removed() -> None:
    # Full-wave rectifier hum sits at twice the mains frequency with no line at
    # the fundamental: a lone line at harmonic 2 is still hum.
    planted = tone(120.0, 8.0, level_db=-35.0)
    stage = Dehum()
    analysis = stage.analyse(speech_like(8.0, seed=4) + planted, RATE_HZ)
    assert analysis.found and analysis.harmonics == [2]
    assert abs(analysis.fundamental_hz - 60.0) < 0.5
    # The notch filter is linear for a fixed analysis: what it leaves of the line alone.
    hum_left, _ = remove_hum(planted, RATE_HZ, analysis, [1, 2, 3], stage.bandwidth_hz)
    assert hum_line_db(hum_left, 60.0, 2) < hum_line_db(planted, 60.0, 2) - 30


def test_metrics_are_catalog_safe() -> None:
    out = Dehum()(speech_like(4.0) + hum(50.0, 4.0))
    assert not any(k.startswith("found__") for k in out.metrics)
    assert out.metrics["removed_harmonics"][:3] == [1, 2, 3]


@pytest.mark.parametrize("bad", [dict(min_hz=30.0), dict(bandwidth_hz=0.0), dict(fundamental_hz=100.0)])
def test_parameters_are_validated(bad: dict) -> None:
    with pytest.raises(ConfigError, match="valid range"):
        Dehum(**bad)


@pytest.mark.corpus
@pytest.mark.parametrize("fundamental_hz, drift_hz", [(50.0, 1.0), (60.0, 0.0)])
def test_corpus_speech_hum_lines_drop_30_db(corpus, fundamental_hz: float, drift_hz: float) -> None:
    speech = load_speech(corpus / "speech_clean" / "cathy_arctic_a0022_1592748039.wav")
    drops, programme_sisdr, _ = _line_drops(speech, fundamental_hz, drift_hz)
    assert min(drops) >= 30.0, drops
    # Notches 2 x 2 Hz wide take a little of the voice's own low harmonics.
    assert programme_sisdr > 15.0


@pytest.mark.corpus
# librispeech_367-130732-0003 has a steady 270 Hz component and no mains line.
@pytest.mark.parametrize("name", ["cathy_arctic_a0001_1592748574.wav", "vctk_p225_022.wav",
                                  "librispeech_367-130732-0003.flac"])
def test_corpus_speech_without_hum_is_untouched(corpus, name: str) -> None:
    speech = load_speech(corpus / "speech_clean" / name)
    out = Dehum()(speech)
    assert out.metrics["changed"] is False
    np.testing.assert_array_equal(out.audio, speech)
