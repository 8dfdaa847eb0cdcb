"""Clipping and clicks in a source recorded at another rate are repaired at that rate, before resampling to 48 kHz.

Resampling smooths a clipped flat top into ripples and spreads a click into
a band-limited pulse, so after extraction at 48 kHz the declip and declick
stages would find (almost) nothing to repair.
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
from archivox.tasks.declick import Declick
from archivox.tasks.declip import Declip
from archivox.tasks.source_rate import repair_file
from signals import RATE_HZ, clicks, clip_to_fraction, si_sdr_db, speech_like, tone


def _partials(duration_s: float, rate_hz: int) -> np.ndarray:
    """Two partials under a slow swell, (1, n): sparse in a short-time spectrum, as declipping assumes."""
    t = np.arange(int(duration_s * rate_hz)) / rate_hz
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    return ((tone(220.0, duration_s, -12.0, rate_hz) + tone(330.0, duration_s, -18.0, rate_hz)) * swell).astype(np.float32)


def _to_48k(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    g = np.gcd(RATE_HZ, rate_hz)
    return resample_poly(audio, RATE_HZ // g, rate_hz // g, axis=-1).astype(np.float32)


def _gain_db(repaired: np.ndarray, damaged: np.ndarray, clean: np.ndarray) -> float:
    n = min(repaired.size, damaged.size, clean.size)
    return si_sdr_db(repaired[:n], clean[:n]) - si_sdr_db(damaged[:n], clean[:n])


def _clicked(duration_s: float, rate_hz: int, per_s: float = 5.0, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(speech-like audio with clicks planted at ``rate_hz``, the same without)."""
    clean = speech_like(duration_s, level_db=-20.0, seed=seed, rate_hz=rate_hz)
    planted, _ = clicks(duration_s, per_s, amplitude=0.5 * float(np.abs(clean).max()), seed=seed, rate_hz=rate_hz)
    return clean + planted, clean


def test_resampling_hides_clipping_and_clicks_from_the_stages() -> None:
    clipped = clip_to_fraction(_partials(2.0, 16_000), 0.02)
    assert Declip()(clipped, 16_000).metrics["found_clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert Declip()(_to_48k(clipped, 16_000)).metrics["found_clipped_fraction"] == 0.0
    clicked, _ = _clicked(4.0, 16_000)
    assert Declick().detect(clicked, 16_000)["clicks"] >= 18  # 20 planted
    assert Declick().detect(_to_48k(clicked, 16_000), RATE_HZ)["clicks"] <= 4


def test_repair_file_block_by_block_matches_the_whole_signal(tmp_path) -> None:
    rate_hz = 16_000
    clean = _partials(3.0, rate_hz)
    clipped = clip_to_fraction(clean, 0.02)
    sf.write(tmp_path / "clipped.wav", clipped[0], rate_hz, subtype="FLOAT")
    records, peak_dbfs = repair_file(tmp_path / "clipped.wav", tmp_path / "repaired.wav", [Declip(), Declick()],
                                     block_s=1.0)
    repaired, rate = sf.read(tmp_path / "repaired.wav", dtype="float32")
    assert rate == rate_hz and repaired.size == clipped.shape[1]
    assert [r.stage for r in records] == ["declip", "declick"]
    assert records[0].metrics["at_source_rate"] is True and records[0].metrics["rate_hz"] == rate_hz
    assert records[0].metrics["found_clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert _gain_db(repaired, clipped[0], clean[0]) >= 5.0
    assert peak_dbfs == pytest.approx(20 * np.log10(np.abs(repaired).max()), abs=0.01)
    # Blocks of 1 s with 1 s of context each side give what the whole signal gives
    # (the stage would also scale its peaks down; the file keeps them).
    whole = Declip(headroom_db=0.0)(clipped, rate_hz).audio[0]
    assert si_sdr_db(repaired, whole) > 30.0


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
    reference, as_extracted = _to_48k(clean, rate_hz)[0], _to_48k(clipped, rate_hz)[0]
    assert _gain_db(out, as_extracted, reference) >= 5.0
    assert [(s["stage"], s["position"]) for s in restored["stages"]] == [("declip", 0)]  # none left for 48 kHz
    assert restored["stages"][0]["metrics"]["at_source_rate"] is True
    assert restored["stages"][0]["metrics"]["rate_hz"] == rate_hz
    assert restored["diagnosis"]["clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert restored["diagnosis"]["source_rate_hz"] == rate_hz and restored["diagnosis"]["sample_rate_hz"] == 48_000
    assert restored["diagnosis"]["seconds"] > 0
    # The original view stays as recorded; the residual holds what declipping added.
    original, _ = sf.read(restored["sources"]["original"], dtype="float32")
    assert _gain_db(original, as_extracted, reference) == pytest.approx(0.0, abs=0.5)
    residual, _ = sf.read(restored["residual_path"], dtype="float32")
    assert np.sqrt(np.mean(residual**2)) > 1e-3


def test_clicks_in_a_source_at_another_rate_are_repaired_with_the_auto_preset(tmp_path) -> None:
    clicked, clean = _clicked(4.0, 16_000)
    _, restored, out = _run(tmp_path, clicked, 16_000, RestoreOptions(stages=["declip", "declick"]))
    assert [s["stage"] for s in restored["stages"]][:1] == ["declick"]  # nothing clipped: no declip row
    assert restored["stages"][0]["metrics"]["at_source_rate"] is True
    assert restored["diagnosis"]["clicks_per_minute"] == pytest.approx(300.0, rel=0.2)
    assert _gain_db(out, _to_48k(clicked, 16_000)[0], _to_48k(clean, 16_000)[0]) >= 10.0


def test_an_undamaged_source_at_another_rate_is_left_as_extracted(tmp_path) -> None:
    clean = speech_like(2.0, seed=4, rate_hz=16_000)
    plan, restored, out = _run(tmp_path, clean, 16_000, RestoreOptions(stages=["declip", "declick"]))
    assert "source_rate_repairs" not in plan.media
    assert not any(s["metrics"].get("at_source_rate") for s in restored["stages"])
    assert si_sdr_db(out[:RATE_HZ], _to_48k(clean, 16_000)[0, :RATE_HZ]) > 40.0


def test_a_long_clipped_source_at_another_rate_is_repaired_block_by_block(tmp_path) -> None:
    rate_hz = 16_000
    clean = _partials(24.0, rate_hz)
    clipped = clip_to_fraction(clean, 0.02)
    restore = RestoreOptions(stages=["declip"], block_s=10.0, long_s=12.0)
    _, restored, out = _run(tmp_path, clipped, rate_hz, restore)
    assert restored["stages"][0]["metrics"]["at_source_rate"] is True
    assert _gain_db(out, _to_48k(clipped, rate_hz)[0], _to_48k(clean, rate_hz)[0]) >= 5.0


def test_runs_that_leave_declip_and_declick_out_do_no_work_at_the_source_rate(tmp_path) -> None:
    clipped = clip_to_fraction(_partials(2.0, 16_000), 0.02)
    plan, restored, _ = _run(tmp_path, clipped, 16_000, RestoreOptions(stages=["dc"]))
    assert "source_rate_repairs" not in plan.media
    assert [s["stage"] for s in restored["stages"]] == ["dc"]


def test_cli_diagnoses_and_restores_at_the_source_rate(tmp_path, capsys) -> None:
    from archivox.cli import main

    clean = _partials(3.0, 16_000)
    clipped = clip_to_fraction(clean, 0.02)
    sf.write(tmp_path / "tape.wav", clipped[0], 16_000, subtype="PCM_24")
    assert main(["diagnose", str(tmp_path / "tape.wav"), "--json"]) == 0
    diagnosis = json.loads(capsys.readouterr().out)
    assert diagnosis["clipped_fraction"] == pytest.approx(0.02, abs=0.003)
    assert (diagnosis["source_rate_hz"], diagnosis["sample_rate_hz"]) == (16_000, 48_000)
    assert main(["restore", str(tmp_path / "tape.wav"), "-o", str(tmp_path / "out.flac"), "--stages", "declip",
                 "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [s["stage"] for s in stages] == ["declip"] and stages[0]["metrics"]["at_source_rate"] is True
    out, _ = sf.read(tmp_path / "out.flac", dtype="float32")
    assert _gain_db(out, _to_48k(clipped, 16_000)[0], _to_48k(clean, 16_000)[0]) >= 5.0
    assert not list(tmp_path.glob(".archivox-*"))  # the work folder is gone


def test_a_long_clipped_item_at_48_khz_gets_one_gain_not_one_per_block(tmp_path) -> None:
    # Louder, clipped middle; the chain's declip would scale its rebuilt peaks
    # block by block and step the level between blocks.
    seconds = 30.0
    audio = _partials(seconds, RATE_HZ) * np.float32(0.8)
    clipped = slice(int(8 * RATE_HZ), int(14 * RATE_HZ))  # in the first two of three 10 s blocks
    audio[0, clipped] = np.clip(audio[0, clipped] * 3.0, -0.5, 0.5) * 2.0
    restore = RestoreOptions(stages=["declip"], block_s=10.0, long_s=12.0)
    _, restored, out = _run(tmp_path, audio, RATE_HZ, restore)
    assert restored["stages"][0]["metrics"]["at_source_rate"] is True
    assert restored["stages"][0]["metrics"]["scaled_db"] < -3.0  # the rebuilt peaks needed it
    # Unclipped seconds in a block with clipping (2 s) and in one without (25 s): the same gain.
    change_db = [20 * np.log10(np.sqrt(np.mean(out[a:a + RATE_HZ] ** 2)) / np.sqrt(np.mean(audio[0, a:a + RATE_HZ] ** 2)))
                 for a in (2 * RATE_HZ, 25 * RATE_HZ)]
    assert abs(change_db[0] - change_db[1]) < 0.5, change_db
