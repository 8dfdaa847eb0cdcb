"""Long items block by block: the same result as the whole-file chain, in bounded memory, written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from archivox.tasks import pipeline
from archivox.tasks.chain import Chain, Stage, StageOutput, build_chain
from archivox.tasks.longform import (
    BlockOptions,
    block_spans,
    diagnose_excerpts,
    merge_block_metrics,
    run_chain_from_file,
)
from archivox.tasks.loudness import (
    LoudnessMeter,
    integrated_loudness_lufs,
    k_weighting_sos,
    true_peak_dbtp,
)
from signals import RATE_HZ, clicks, hum, si_sdr_db, speech_like, tone, white_noise

from archivox.config import RestoreOptions, RunOptions
from archivox.errors import ConfigError
from archivox.manifest import ManifestItem


def _defective(duration_s: float, seed: int = 0, hum_hz: float = 50.0) -> np.ndarray:
    """(1, samples): speech-like signal with mains hum, hiss and 3 clicks a second."""
    audio = (speech_like(duration_s, seed=seed) + hum(hum_hz, duration_s, level_db=-35.0)
             + white_noise(duration_s, -50.0, seed=seed) + clicks(duration_s, 3.0, 0.3, seed=seed)[0])
    return audio.astype(np.float32)


def test_k_weighting_is_the_standard_filter_and_a_1khz_tone_reads_its_level():
    # BS.1770-4 gives these coefficients at 48 kHz.
    expected = [[1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585],
                [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]]
    np.testing.assert_allclose(k_weighting_sos(48_000), expected, rtol=1e-9)
    # A 997 Hz sine at -20 dBFS peak reads -23.0 LUFS (K-weighting adds ~0.7 dB there; -0.691 takes it off, RMS -3 dB).
    sine = tone(997.0, 10.0, level_db=-23.0103)  # signals.tone levels are RMS
    assert integrated_loudness_lufs(sine, RATE_HZ) == pytest.approx(-23.0, abs=0.05)


def test_loudness_meter_fed_in_pieces_matches_one_piece_and_pyloudnorm():
    audio = np.vstack([speech_like(30.0, seed=1), 0.5 * speech_like(30.0, seed=2)])
    whole = LoudnessMeter(RATE_HZ, 2)
    whole.add(audio)
    pieces = LoudnessMeter(RATE_HZ, 2)
    for start in range(0, audio.shape[1], 12_345):
        pieces.add(audio[:, start : start + 12_345])
    assert pieces.integrated_lufs() == pytest.approx(whole.integrated_lufs(), abs=1e-6)
    # pyloudnorm approximates the filters; it agrees to a few hundredths of a LU.
    reference = pyloudnorm.Meter(RATE_HZ).integrated_loudness(audio.T.astype(np.float64))
    assert whole.integrated_lufs() == pytest.approx(reference, abs=0.1)
    silent = LoudnessMeter(RATE_HZ, 1)
    silent.add(np.zeros((1, RATE_HZ * 2), dtype=np.float32))
    assert silent.integrated_lufs() == float("-inf")


def test_block_spans_cover_the_item_without_a_runt():
    spans = block_spans(1_000, 300)
    assert spans[0][0] == 0 and spans[-1][1] == 1_000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(e - s for s, e in spans) - min(e - s for s, e in spans) <= 1
    assert block_spans(100, 300) == [(0, 100)]


def test_block_options_are_validated_with_their_range():
    with pytest.raises(ConfigError, match=r"crossfade_s=5.0 is out of range; valid range is \[0.01, 3.0\]"):
        BlockOptions(crossfade_s=5.0)
    with pytest.raises(ConfigError, match="block_s"):
        RestoreOptions(block_s=1.0)


def test_merged_metrics_add_counts_average_levels_and_keep_peaks():
    merged = merge_block_metrics([
        ({"changed": False, "clicks": 10, "clicks_per_minute": 6.0, "true_peak_dbtp": -3.0, "hum_harmonics": [1, 2]}, 60.0, 66.0),
        ({"changed": True, "clicks": 22, "clicks_per_minute": 12.0, "true_peak_dbtp": -1.5, "hum_harmonics": [2, 3]}, 30.0, 33.0),
    ])
    assert merged["changed"] is True and merged["blocks"] == 2
    assert merged["clicks"] == round(10 * 60 / 66 + 22 * 30 / 33)  # the context is seen twice; counts are scaled to each block's own span
    assert merged["clicks_per_minute"] == pytest.approx(8.0)
    assert merged["true_peak_dbtp"] == -1.5 and merged["hum_harmonics"] == [1, 2, 3]


@pytest.mark.slow
def test_blocks_give_the_whole_file_result_with_every_output(tmp_path):
    duration_s = 48.0
    stereo = np.vstack([_defective(duration_s), 0.7 * _defective(duration_s, seed=3)])
    source = tmp_path / "in.wav"
    sf.write(source, stereo.T, RATE_HZ, subtype="FLOAT")
    chain = build_chain(["dc", "declick", "dehum", "denoise", "eq", "loudness"], {"denoise": {"dnsmos": False}}, device="cpu")
    whole = chain(stereo, RATE_HZ, keep_before=["denoise", "eq"])

    result = run_chain_from_file(
        chain, source, tmp_path / "out.flac", tmp_path / "work",
        keep_before={"denoise": tmp_path / "pre_denoise.wav"}, residual=("eq", tmp_path / "residual.flac"),
        options=BlockOptions(block_s=16.0, long_s=16.0),
    )
    out, rate = sf.read(tmp_path / "out.flac", always_2d=True, dtype="float32")
    pre, _ = sf.read(tmp_path / "pre_denoise.wav", always_2d=True, dtype="float32")
    residual, _ = sf.read(tmp_path / "residual.flac", always_2d=True, dtype="float32")
    assert rate == RATE_HZ and out.shape == pre.shape == residual.shape == stereo.T.shape
    for channel in range(2):
        # The DSP stages with their context give the whole-file result to the last bit or so ...
        assert si_sdr_db(pre[:, channel], whole.before["denoise"][channel]) > 60.0
        # ... and the denoiser's chunking plus a loudness gain a few hundredths of a dB
        # apart (which the limiter meets at slightly different peaks) keep it close.
        assert si_sdr_db(out[:, channel], whole.audio[channel]) > 25.0
        # The residual is small (hum, clicks, hiss), so the same differences weigh more in it.
        assert si_sdr_db(residual[:, channel], stereo[channel] - whole.before["eq"][channel]) > 20.0
    assert integrated_loudness_lufs(out.T, RATE_HZ) == pytest.approx(-18.0, abs=0.5)
    assert true_peak_dbtp(out.T) <= -1.0 + 0.05  # 24-bit rounding
    records = {r.stage: r for r in result.records}
    assert [r.stage for r in result.records] == chain.names
    assert records["declick"].metrics["blocks"] == 3
    whole_clicks = whole.records[1].metrics["found_clicks"]
    assert records["declick"].metrics["found_clicks"] == pytest.approx(whole_clicks, rel=0.05)
    assert records["loudness"].metrics["output_true_peak_dbtp"] <= -1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "out.flac", "pre_denoise.wav", "residual.flac", "work"]
    assert list((tmp_path / "work").iterdir()) == []  # the loudness work files are gone


@dataclass
class _FailsOnSecondBlock(Stage):
    name = "dc"  # stands in for a stage that breaks part-way through an item
    calls: int = 0

    def repair(self, audio, sample_rate_hz, findings):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("disk full")
        return StageOutput(audio)


def test_a_failure_part_way_leaves_no_output_behind(tmp_path):
    source = tmp_path / "in.wav"
    sf.write(source, _defective(40.0)[0], RATE_HZ, subtype="FLOAT")
    chain = Chain([_FailsOnSecondBlock(), *build_chain(["loudness"]).stages])
    with pytest.raises(RuntimeError, match="disk full"):
        run_chain_from_file(chain, source, tmp_path / "out.flac", tmp_path / "work",
                            residual=("loudness", tmp_path / "residual.flac"),
                            options=BlockOptions(block_s=15.0, long_s=15.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "work"]
    assert list((tmp_path / "work").iterdir()) == []


def test_long_items_are_restored_in_blocks_by_the_pipeline(tmp_path):
    audio = _defective(50.0, hum_hz=60.0)[0]
    root = tmp_path / "root"
    root.mkdir()
    sf.write(root / "tape.wav", audio, RATE_HZ, subtype="FLOAT")
    options = RunOptions(
        restore=RestoreOptions(stages=["dc", "dehum", "loudness"], residual=True, block_s=15.0, long_s=20.0),
        transcribe_enabled=False,
    )
    item = ManifestItem(item_id="tape", path="tape.wav", row=1)
    plan = pipeline.prepare(item, run_id="r1", root=root, out=tmp_path / "out", work_root=tmp_path / "out" / ".work",
                            previous=None, previous_failure=None, failures_by_sha={}, options=options,
                            config_hash=options.config_hash(), models="", force=False)
    restored = pipeline.restore(plan, pipeline.extract(plan, options), options)
    assert [s["stage"] for s in restored["stages"]] == ["dc", "dehum", "loudness"]
    assert all(s["metrics"]["blocks"] == 3 for s in restored["stages"])
    assert restored["diagnosis"]["hum_found"] and restored["diagnosis"]["duration_s"] == pytest.approx(50.0)
    assert restored["diagnosis"]["seconds"] > 0  # its time, apart from the stages' (bench/throughput.py)
    out, _ = sf.read(plan.restored_path, always_2d=True)
    target_lufs = restored["stages"][-1]["params"]["target_lufs"]  # the preset's
    assert out.shape[0] == audio.size and integrated_loudness_lufs(out.T, RATE_HZ) == pytest.approx(target_lufs, abs=0.5)
    residual, _ = sf.read(restored["residual_path"], always_2d=True)
    assert residual.shape[0] == audio.size


def test_diagnosis_from_excerpts_finds_hum_that_runs_through_the_item(tmp_path):
    audio = _defective(90.0, hum_hz=60.0)[0]
    sf.write(tmp_path / "tape.wav", audio, RATE_HZ, subtype="FLOAT")
    diagnosis = diagnose_excerpts(tmp_path / "tape.wav", excerpt_s=10.0, excerpts=4)
    assert diagnosis.duration_s == pytest.approx(90.0)
    assert diagnosis.hum_found and diagnosis.hum_fundamental_hz == pytest.approx(60.0, abs=0.5)
    assert diagnosis.clicks_per_minute == pytest.approx(180.0, rel=0.2)


def test_cli_restores_a_long_input_in_blocks(tmp_path, capsys):
    from archivox.cli import main

    sf.write(tmp_path / "tape.wav", _defective(36.0)[0], RATE_HZ, subtype="PCM_16")
    destination = tmp_path / "restored" / "tape.flac"
    assert main(["restore", str(tmp_path / "tape.wav"), "-o", str(destination), "--stages", "declick,loudness",
                 "--long-s", "20", "--block-s", "12", "--json"]) == 0
    stages = {s["stage"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert stages["declick"]["metrics"]["blocks"] == 3
    assert sf.info(str(destination)).frames == int(36.0 * RATE_HZ)
    assert [p.name for p in destination.parent.iterdir()] == ["tape.flac"]  # no work files left beside it
