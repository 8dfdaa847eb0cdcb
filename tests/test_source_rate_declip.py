"""Clipping in a source recorded at another rate is repaired at that rate, before resampling to 48 kHz.

Resampling smooths a clipped flat top into ripples, so after extraction at
48 kHz the declip stage would find nothing to repair.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from archivox.config import RestoreOptions, RunOptions
from archivox.manifest import ManifestItem
from archivox.tasks import pipeline
from archivox.tasks.declip import Declip, declip_file
from signals import RATE_HZ, clip_to_fraction, si_sdr_db, speech_like, tone


def _partials(duration_s: float, rate_hz: int) -> np.ndarray:
    """Two partials under a slow swell, (1, n): sparse in a short-time spectrum, as the reconstruction assumes."""
    t = np.arange(int(duration_s * rate_hz)) / rate_hz
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    return ((tone(220.0, duration_s, -12.0, rate_hz) + tone(330.0, duration_s, -18.0, rate_hz)) * swell).astype(np.float32)


def _gain_db(repaired: np.ndarray, clipped: np.ndarray, clean: np.ndarray) -> float:
    n = min(repaired.size, clipped.size, clean.size)
    return si_sdr_db(repaired[:n], clean[:n]) - si_sdr_db(clipped[:n], clean[:n])


def test_resampling_hides_clipping_from_the_stage() -> None:
    clean = _partials(2.0, 16_000)
    clipped = clip_to_fraction(clean, 0.02)
    at_48k = resample_poly(clipped, RATE_HZ, 16_000, axis=1).astype(np.float32)
    assert Declip()(clipped, 16_000).metrics["found_clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert Declip()(at_48k, RATE_HZ).metrics["found_clipped_fraction"] == 0.0


def test_declip_file_block_by_block_matches_the_whole_signal(tmp_path) -> None:
    rate_hz = 16_000
    clean = _partials(3.0, rate_hz)
    clipped = clip_to_fraction(clean, 0.02)
    sf.write(tmp_path / "clipped.wav", clipped[0], rate_hz, subtype="FLOAT")
    found = declip_file(tmp_path / "clipped.wav", tmp_path / "repaired.wav", block_s=1.0)
    repaired, rate = sf.read(tmp_path / "repaired.wav", dtype="float32")
    assert rate == rate_hz and repaired.size == clipped.shape[1]
    assert found["changed"] and found["rate_hz"] == rate_hz
    assert found["clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert _gain_db(repaired, clipped[0], clean[0]) >= 5.0
    # Blocks of 1 s with 0.5 s of context each side give what the whole signal gives
    # (the stage would also scale its peaks down; the file keeps them).
    whole = Declip(headroom_db=0.0)(clipped, rate_hz).audio[0]
    assert si_sdr_db(repaired, whole) > 30.0

    # Nothing clipped: no file is written.
    sf.write(tmp_path / "clean.wav", clean[0], rate_hz, subtype="FLOAT")
    assert declip_file(tmp_path / "clean.wav", tmp_path / "none.wav")["changed"] is False
    assert not (tmp_path / "none.wav").exists()


def _run(tmp_path, audio: np.ndarray, rate_hz: int, restore: RestoreOptions):
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    sf.write(root / "tape.wav", audio[0], rate_hz, subtype="PCM_24")
    options = RunOptions(restore=restore, transcribe_enabled=False)
    plan = pipeline.prepare(
        ManifestItem(item_id="tape", path="tape.wav", row=1), run_id="r1", root=root, out=tmp_path / "out",
        work_root=tmp_path / "out" / ".work", previous=None, previous_failure=None, failures_by_sha={},
        options=options, config_hash=options.config_hash(), models="", force=False)
    restored = pipeline.restore(plan, pipeline.extract(plan, options), options)
    out, out_rate = sf.read(plan.restored_path, dtype="float32")
    assert out_rate == RATE_HZ
    return plan, restored, out


@pytest.mark.parametrize("rate_hz", [16_000, 44_100])
def test_a_clipped_source_at_another_rate_is_repaired(tmp_path, rate_hz: int) -> None:
    clean = _partials(3.0, rate_hz)
    clipped = clip_to_fraction(clean, 0.02)
    _, restored, out = _run(tmp_path, clipped, rate_hz, RestoreOptions(stages=["declip"], residual=True))
    reference = resample_poly(clean[0], RATE_HZ, rate_hz)
    as_extracted = resample_poly(clipped[0], RATE_HZ, rate_hz)
    assert _gain_db(out, as_extracted, reference) >= 5.0
    first = restored["stages"][0]
    assert first["stage"] == "declip" and first["metrics"]["at_source_rate"] is True
    assert first["metrics"]["rate_hz"] == rate_hz and first["position"] == 0
    assert restored["diagnosis"]["clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    # The original view stays as recorded; the residual holds what declipping added.
    original, _ = sf.read(restored["sources"]["original"], dtype="float32")
    assert _gain_db(original, as_extracted, reference) == pytest.approx(0.0, abs=0.5)
    residual, _ = sf.read(restored["residual_path"], dtype="float32")
    assert np.sqrt(np.mean(residual**2)) > 1e-3


def test_an_unclipped_source_at_another_rate_is_left_as_extracted(tmp_path) -> None:
    clean = speech_like(2.0, seed=4, rate_hz=16_000)
    plan, restored, out = _run(tmp_path, clean, 16_000, RestoreOptions(stages=["declip"]))
    assert "source_rate_declip" not in plan.media
    assert [s["stage"] for s in restored["stages"]] == ["declip"]
    assert restored["stages"][0]["metrics"]["changed"] is False
    assert si_sdr_db(out[: RATE_HZ], resample_poly(clean[0], RATE_HZ, 16_000)[: RATE_HZ]) > 40.0


def test_a_long_clipped_source_at_another_rate_is_repaired_block_by_block(tmp_path) -> None:
    rate_hz = 16_000
    clean = _partials(24.0, rate_hz)
    clipped = clip_to_fraction(clean, 0.02)
    restore = RestoreOptions(stages=["declip"], block_s=10.0, long_s=12.0)
    _, restored, out = _run(tmp_path, clipped, rate_hz, restore)
    assert restored["stages"][0]["metrics"]["at_source_rate"] is True
    assert _gain_db(out, resample_poly(clipped[0], RATE_HZ, rate_hz), resample_poly(clean[0], RATE_HZ, rate_hz)) >= 5.0


def test_runs_that_leave_declip_out_do_not_declip_at_the_source_rate(tmp_path) -> None:
    clipped = clip_to_fraction(_partials(2.0, 16_000), 0.02)
    plan, restored, _ = _run(tmp_path, clipped, 16_000, RestoreOptions(stages=["dc"]))
    assert "source_rate_declip" not in plan.media
    assert [s["stage"] for s in restored["stages"]] == ["dc"]


def test_cli_diagnoses_and_restores_clipping_at_the_source_rate(tmp_path, capsys) -> None:
    from archivox.cli import main

    clean = _partials(3.0, 16_000)
    clipped = clip_to_fraction(clean, 0.02)
    sf.write(tmp_path / "tape.wav", clipped[0], 16_000, subtype="PCM_24")
    assert main(["diagnose", str(tmp_path / "tape.wav"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert main(["restore", str(tmp_path / "tape.wav"), "-o", str(tmp_path / "out.flac"), "--stages", "declip",
                 "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [s["stage"] for s in stages] == ["declip", "declip"]
    assert stages[0]["metrics"]["at_source_rate"] is True and stages[1]["position"] == 1
    out, _ = sf.read(tmp_path / "out.flac", dtype="float32")
    assert _gain_db(out, resample_poly(clipped[0], RATE_HZ, 16_000), resample_poly(clean[0], RATE_HZ, 16_000)) >= 5.0
    assert not list(tmp_path.glob(".archivox-*"))  # the work folder is gone
