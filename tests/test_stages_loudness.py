"""Loudness stage on real speech: within 0.5 LU of the target, true peak at or under the ceiling."""

from __future__ import annotations

import pytest

from archivox.tasks.loudness import Loudness, integrated_loudness_lufs, true_peak_dbtp
from signals import RATE_HZ, load_speech


@pytest.mark.corpus
@pytest.mark.parametrize("target_lufs", [-16.0, -23.0])
def test_corpus_loudness_and_true_peak(corpus, target_lufs: float) -> None:
    stage = Loudness(target_lufs=target_lufs, ceiling_dbtp=-1.0)
    for name in ["cathy_arctic_a0001_1592748574.wav", "ljspeech_LJ001-0005.wav", "vctk_p234_009.wav"]:
        out = stage(load_speech(corpus / "speech_clean" / name)).audio
        assert abs(integrated_loudness_lufs(out, RATE_HZ) - target_lufs) <= 0.5, name
        assert true_peak_dbtp(out) <= -1.0 + 1e-6, name
