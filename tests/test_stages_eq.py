"""Speech EQ: the shelf gives +1.5 dB of air, the high-pass takes rumble, and nothing happens without cause."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from archivox.errors import ConfigError
from archivox.tasks.eq import SpeechEQ, high_shelf_sos
from signals import RATE_HZ, rms_db, speech_like, tone, white_noise


def test_shelf_response_in_db() -> None:
    _, response = signal.sosfreqz(high_shelf_sos(8000.0, 1.5, RATE_HZ), worN=[200.0, 1000.0, 8000.0, 16000.0], fs=RATE_HZ)
    gain = 20 * np.log10(np.abs(response))
    assert abs(gain[0]) < 0.05 and abs(gain[1]) < 0.05  # the voice is untouched
    assert 0.5 < gain[2] < 1.0  # half the gain at the corner
    assert 1.3 < gain[3] < 1.6  # full gain an octave above


def test_highpass_removes_rumble_and_keeps_voice() -> None:
    rumble, voice = tone(30.0, 2.0, -20.0), tone(1000.0, 2.0, -20.0)
    out = SpeechEQ(shelf_gain_db=0.0)(rumble + voice + white_noise(2.0, -70.0)).audio
    cut = slice(RATE_HZ // 2, None)  # past the filter's start-up
    # Project on each tone to measure what is left of it.
    t = np.arange(out.shape[1]) / RATE_HZ
    def level(freq: float) -> float:
        return 20 * np.log10(2 * abs(np.mean((out[0] * np.exp(-2j * np.pi * freq * t))[cut])))
    assert level(30.0) < rms_db(rumble) + 3 - 20.0  # >= 20 dB down (rms_db + 3 dB = sine amplitude)
    assert abs(level(1000.0) - (rms_db(voice) + 3.0)) < 0.1


def test_no_air_and_no_rumble_means_no_change() -> None:
    # A 16 kHz source at 48 kHz has nothing above 8 kHz to lift.
    narrow = signal.resample_poly(speech_like(2.0, rate_hz=16_000)[0], 3, 1).astype(np.float32)[None, :]
    out = SpeechEQ(highpass_hz=0.0)(narrow)
    assert out.metrics["changed"] is False
    np.testing.assert_array_equal(out.audio, narrow)


def test_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match="valid range"):
        SpeechEQ(shelf_gain_db=12.0)
