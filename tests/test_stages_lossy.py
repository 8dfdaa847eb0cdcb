"""Lossy-source flag: audio through real ffmpeg encoders is flagged, lossless audio is not."""

from __future__ import annotations

import numpy as np
import pytest

from archivox.tasks.diagnose import diagnose, lossy_source
from media import write_wav
from signals import RATE_HZ, lossy_roundtrip, speech_like, white_noise


def _flag(audio: np.ndarray) -> tuple[bool, str]:
    lossy, evidence, _, _ = lossy_source(np.asarray(audio, dtype=np.float64).mean(axis=0), RATE_HZ)
    return lossy, evidence


@pytest.fixture(scope="module")
def generated_source(tmp_path_factory):
    """A full-band 48 kHz recording: voiced speech stand-in over a -55 dBFS noise floor."""
    audio = speech_like(6.0, seed=0) + white_noise(6.0, -55.0, seed=0)
    return write_wav(tmp_path_factory.mktemp("lossy") / "source.wav", audio, RATE_HZ)


@pytest.mark.parametrize("codec", ["mp3_64k", "mp3_128k", "opus_64k", "vorbis_q3"])
def test_generated_signal_through_an_encoder_is_flagged(generated_source, tmp_path, codec: str) -> None:
    lossy, evidence = _flag(lossy_roundtrip(generated_source, codec, tmp_path))
    assert lossy, (codec, evidence)
    assert "encoder" in evidence or "codec" in evidence


def test_lossless_and_resampled_generated_signal_is_not_flagged(generated_source, tmp_path) -> None:
    lossy, evidence = _flag(lossy_roundtrip(generated_source, "flac", tmp_path))
    assert not lossy, evidence
    # A 16 kHz recording resampled to 48 kHz has a sharp cut too, at its old Nyquist frequency.
    narrow = lossy_roundtrip(generated_source, "flac", tmp_path, ("-ar", "16000"))
    lossy, evidence = _flag(narrow)
    assert not lossy, evidence
    assert "16 kHz" in evidence
    d = diagnose(narrow, RATE_HZ)
    assert d.lossy_source_likely is False and 8000 < d.effective_bandwidth_hz < 9500
    assert d.spectral_holes_fraction is not None and d.spectral_holes_fraction < 0.002


# Full-band (48 kHz) recordings; and lossless originals of three provenances.
_FULL_BAND = ["cathy_arctic_a0003_1592748500.wav", "vctk_p234_004.wav"]
_LOSSLESS = ["cathy_arctic_a0003_1592748500.wav", "vctk_p234_004.wav", "vctk_p225_024.wav", "cmu_arctic_aew_a0001.wav"]


@pytest.mark.corpus
@pytest.mark.parametrize("codec", ["mp3_64k", "mp3_128k", "aac_96k", "opus_64k", "vorbis_q3"])
def test_corpus_speech_through_an_encoder_is_flagged(corpus, tmp_path, codec: str) -> None:
    for name in _FULL_BAND:
        lossy, evidence = _flag(lossy_roundtrip(corpus / "speech_clean" / name, codec, tmp_path))
        assert lossy, (name, codec, evidence)


@pytest.mark.corpus
def test_corpus_lossless_originals_are_not_flagged(corpus, tmp_path) -> None:
    from archivox.tasks.extract import decode

    for name in _LOSSLESS:
        lossy, evidence = _flag(decode(corpus / "speech_clean" / name))
        assert not lossy, (name, evidence)
