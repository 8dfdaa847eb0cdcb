"""The chain framework and the DC and loudness stages, by their physical effect."""

from __future__ import annotations

import numpy as np
import pytest

from archivox.errors import ConfigError
from archivox.tasks.chain import STAGE_ORDER, Chain, build_chain, parse_stage_list
from archivox.tasks.dc import DCOffset
from archivox.tasks.loudness import Loudness, integrated_loudness_lufs, true_peak_dbtp
from signals import RATE_HZ, rms_db, speech_like, tone, white_noise


def test_stage_names_are_the_public_contract():
    assert STAGE_ORDER == ("declip", "dc", "declick", "dehum", "denoise", "eq", "loudness")
    assert parse_stage_list("loudness, dc") == ["loudness", "dc"]
    with pytest.raises(ConfigError, match="unknown stage 'hiss'; valid stages are declip, dc, declick"):
        parse_stage_list("dc,hiss")
    with pytest.raises(ConfigError, match="twice"):
        parse_stage_list("dc,dc")


def test_chain_runs_in_public_order_and_records_each_stage():
    chain = build_chain(["loudness", "dc"])
    assert chain.names == ["dc", "loudness"]
    result = chain(speech_like(2.0) + 0.05)
    assert [r.stage for r in result.records] == ["dc", "loudness"]
    for record in result.records:
        assert record.seconds >= 0 and record.device == "cpu" and record.params
    assert result.records[1].params["target_lufs"] == -18.0
    assert "output_loudness_lufs" in result.records[1].metrics


def test_parameters_are_validated_with_value_and_range():
    with pytest.raises(ConfigError, match=r"target_lufs=-70 is out of range; valid range is \[-40.0, -5.0\]"):
        Loudness(target_lufs=-70)
    with pytest.raises(ConfigError, match="has no parameter"):
        build_chain(["dc"], {"dc": {"cutoff": 10}})


def test_dc_stage_removes_offset_and_keeps_speech_band():
    signal = tone(200.0, 2.0, level_db=-20.0) + np.float32(0.1)
    out = DCOffset()(signal)
    assert abs(float(out.audio.mean())) < 1e-3  # offset down by more than 40 dB
    assert rms_db(out.audio) == pytest.approx(-20.0, abs=0.1)  # the 200 Hz tone is untouched
    assert out.metrics["found_offset_db"] == pytest.approx(-20.0, abs=0.01)


def test_dc_stage_leaves_clean_audio_exactly_alone():
    signal = tone(200.0, 1.0)
    signal = signal - signal.mean()
    out = DCOffset()(signal)
    assert out.metrics["changed"] is False
    np.testing.assert_array_equal(out.audio, signal)


@pytest.mark.parametrize("target_lufs,ceiling_dbtp", [(-16.0, -1.0), (-23.0, -2.0)])
def test_loudness_hits_target_under_true_peak_ceiling(target_lufs, ceiling_dbtp):
    # Speech with sharp peaks: raising it to target needs the limiter.
    signal = speech_like(6.0, level_db=-35.0)
    signal[0, ::4800] = 0.3
    out = Loudness(target_lufs=target_lufs, ceiling_dbtp=ceiling_dbtp)(signal).audio
    assert integrated_loudness_lufs(out, RATE_HZ) == pytest.approx(target_lufs, abs=0.5)
    assert true_peak_dbtp(out) <= ceiling_dbtp + 1e-6


def test_a_quiet_transfer_reaches_the_target_unless_the_gain_is_capped():
    quiet = speech_like(6.0, level_db=-60.0)
    assert integrated_loudness_lufs(quiet, RATE_HZ) < -55.0
    out = Loudness(target_lufs=-16.0)(quiet)
    assert integrated_loudness_lufs(out.audio, RATE_HZ) == pytest.approx(-16.0, abs=0.5)
    capped = Loudness(target_lufs=-16.0, max_gain_db=20.0)(quiet)
    assert capped.metrics["gain_db"] == pytest.approx(20.0)
    assert integrated_loudness_lufs(capped.audio, RATE_HZ) == pytest.approx(
        integrated_loudness_lufs(quiet, RATE_HZ) + 20.0, abs=0.1)


def test_loudness_leaves_silence_and_tiny_clips_alone():
    silence = np.zeros((1, RATE_HZ), np.float32)
    assert Loudness()(silence).metrics["changed"] is False
    short = white_noise(0.1, level_db=-50)
    np.testing.assert_array_equal(Loudness()(short).audio, short)


def test_chain_accepts_mono_vectors_and_stereo():
    stereo = np.concatenate([speech_like(1.0), speech_like(1.0, seed=1)])
    assert Chain([DCOffset()])(stereo).audio.shape == stereo.shape
    assert Chain([DCOffset()])(stereo[0]).audio.shape == (1, stereo.shape[1])


def test_chain_keeps_the_audio_entering_named_stages():
    signal = speech_like(1.0) + np.float32(0.05)
    result = build_chain(["dc", "loudness"])(signal, keep_before=["loudness", "denoise"])
    assert set(result.before) == {"loudness"}  # denoise is not in this chain
    assert abs(float(result.before["loudness"].mean())) < 1e-3  # after dc, before loudness
    np.testing.assert_array_equal(build_chain(["dc"])(signal).audio, result.before["loudness"])


def test_working_data_of_a_stage_stays_out_of_its_metrics():
    from dataclasses import dataclass

    from archivox.tasks.chain import Stage, StageOutput

    @dataclass
    class Probe(Stage):
        name = "probe"

        def detect(self, audio, sample_rate_hz):
            return {"level_db": -20.0, "_mask": np.ones(audio.shape[1], bool)}

        def repair(self, audio, sample_rate_hz, findings):
            assert findings["_mask"].all()
            return StageOutput(audio, {"changed": False, "_scratch": [1, 2]})

    assert Probe()(tone(100.0, 0.1)).metrics == {"found_level_db": -20.0, "changed": False}
