"""The per-item steps without Prefect: plan, extract, restore (residual), record, fixity."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from archivox.catalog.store import Catalog
from archivox.config import RestoreOptions, RunOptions
from archivox.manifest import ManifestItem
from archivox.tasks import pipeline
from media import write_wav
from signals import RATE_HZ, hum, rms_db, si_sdr_db, speech_like


def _plan(tmp_path, rel="tape.wav", options=None, **kwargs):
    options = options or RunOptions(restore=RestoreOptions(stages=["dc", "dehum", "loudness"], residual=True), transcribe_enabled=False)
    item = ManifestItem(item_id="tape", path=rel, row=1)
    defaults = dict(run_id="r1", root=tmp_path / "root", out=tmp_path / "out", work_root=tmp_path / "out" / ".work",
                    previous=None, previous_failure=None, failures_by_sha={}, options=options,
                    config_hash=options.config_hash(), models="", force=False)
    defaults.update(kwargs)
    return pipeline.prepare(item, **defaults), options


def test_restore_writes_flac_and_a_time_aligned_residual(tmp_path):
    clean = speech_like(4.0, level_db=-26.0)
    write_wav(tmp_path / "root" / "tape.wav", clean + hum(50.0, 4.0, level_db=-30.0), RATE_HZ, subtype="FLOAT")
    plan, options = _plan(tmp_path)
    assert plan.error == "" and plan.sha256 and plan.media["sample_rate_hz"] == RATE_HZ
    extracted = pipeline.extract(plan, options)
    restored = pipeline.restore(plan, extracted, options)
    assert [s["stage"] for s in restored["stages"]] == ["dc", "dehum", "loudness"]
    out, rate = sf.read(plan.restored_path, always_2d=True)
    assert rate == RATE_HZ and sf.info(plan.restored_path).subtype == "PCM_24"
    residual, _ = sf.read(restored["residual_path"], always_2d=True)
    # What dehum took away is the hum: the residual matches the planted hum, not the speech.
    planted = hum(50.0, 4.0, level_db=-30.0)[0]
    assert si_sdr_db(residual[:, 0], planted) > 10.0
    assert rms_db(residual[:, 0]) == pytest.approx(-30.0, abs=1.5)
    row = pipeline.record(plan, Catalog(tmp_path / "cat"), config_hash="c", models="m", restored=restored)
    assert row["status"] == "ok" and row["residual_path"] == restored["residual_path"]
    assert not (tmp_path / "out" / ".work" / "r1" / "tape").exists()


def test_an_original_that_changes_mid_run_is_a_fixity_failure(tmp_path):
    write_wav(tmp_path / "root" / "tape.wav", speech_like(1.0), RATE_HZ)
    plan, options = _plan(tmp_path)
    pipeline.extract(plan, options)
    with open(tmp_path / "root" / "tape.wav", "r+b") as handle:  # someone else writes to the archive
        handle.seek(100)
        handle.write(b"\x00\x01")
    row = pipeline.record(plan, Catalog(tmp_path / "cat"), config_hash="c", models="m")
    assert row["status"] == "failed" and row["error_kind"] == "fixity"
    assert "changed during processing" in row["error"]


def test_missing_files_and_escaping_paths_are_planned_as_failures(tmp_path):
    (tmp_path / "root").mkdir()
    missing, _ = _plan(tmp_path, rel="nothing.wav")
    assert missing.error_kind == "bad_input" and "not found" in missing.error
    escaping, _ = _plan(tmp_path, rel="../../etc/passwd")
    assert "outside the archive root" in escaping.error


def test_unchanged_items_are_skipped_and_forced_items_are_not(tmp_path):
    write_wav(tmp_path / "root" / "tape.wav", speech_like(1.0), RATE_HZ)
    first, options = _plan(tmp_path)
    restored_path = tmp_path / "out" / "tape.wav.flac"
    restored_path.parent.mkdir(parents=True)
    restored_path.write_bytes(b"x")
    previous = {"sha256": first.sha256, "config_hash": options.config_hash(), "models_key": "", "restored_path": str(restored_path), "run_id": "r0"}
    again, _ = _plan(tmp_path, previous=previous)
    assert again.skip_reason.startswith("unchanged since run r0")
    forced, _ = _plan(tmp_path, previous=previous, force=True)
    assert forced.skip_reason == ""
    other_config = RunOptions(restore=RestoreOptions(stages=["dc"]), transcribe_enabled=False)
    changed, _ = _plan(tmp_path, previous=previous, options=other_config)
    assert changed.skip_reason == ""
    exhausted, _ = _plan(tmp_path, failures_by_sha={first.sha256: 3})
    assert "failed 3 times" in exhausted.skip_reason
    # The catalog's record is not this output folder's: a run into another
    # folder (or after `archivox prune` removed the output) does the item.
    elsewhere, _ = _plan(tmp_path, previous=previous, out=tmp_path / "other-out")
    assert elsewhere.skip_reason == "" and elsewhere.restored_path == str(tmp_path / "other-out" / "tape.wav.flac")
    moved = tmp_path / "moved-out"
    restored_path.parent.rename(moved)
    in_moved, _ = _plan(tmp_path, previous=previous, out=moved)
    assert in_moved.skip_reason.startswith("unchanged since run r0")


def test_an_item_done_by_an_older_release_is_done_again(tmp_path, monkeypatch):
    """A release that restores differently with the same settings must not leave old outputs as 'unchanged'."""
    import archivox.config

    write_wav(tmp_path / "root" / "tape.wav", speech_like(1.0), RATE_HZ)
    options = RunOptions(restore=RestoreOptions(stages=["dc"]), transcribe_enabled=True)
    first, _ = _plan(tmp_path, options=options)
    restored_path = tmp_path / "out" / "tape.wav.flac"
    restored_path.parent.mkdir(parents=True)
    restored_path.write_bytes(b"x")
    previous = {"sha256": first.sha256, "config_hash": options.config_hash(), "models_key": "", "restored_path": str(restored_path), "run_id": "r0"}
    for constant in ("RESTORATION_REVISION", "TRANSCRIPTION_REVISION"):
        with monkeypatch.context() as patch:
            patch.setattr(archivox.config, constant, getattr(archivox.config, constant) + 1)
            assert options.config_hash() != previous["config_hash"]
            redone, _ = _plan(tmp_path, previous=previous, options=options, config_hash=options.config_hash())
            assert redone.skip_reason == ""
    same, _ = _plan(tmp_path, previous=previous, options=options)
    assert same.skip_reason.startswith("unchanged since run r0")


def test_restore_hands_transcription_the_denoised_audio_before_loudness(tmp_path):
    write_wav(tmp_path / "root" / "tape.wav", speech_like(4.0, level_db=-35.0), RATE_HZ, subtype="FLOAT")
    options = RunOptions(restore=RestoreOptions(stages=["dc", "denoise", "loudness"]), transcribe_enabled=False)
    plan, _ = _plan(tmp_path, options=options)
    restored = pipeline.restore(plan, pipeline.extract(plan, options), options)
    assert set(restored["sources"]) == {"original", "pre_denoise", "denoised", "restored"}
    denoised, _ = sf.read(restored["sources"]["denoised"], always_2d=True)
    final, _ = sf.read(plan.restored_path, always_2d=True)
    # The same audio, before loudness raised it by about 17 dB (and its limiter reshaped the peaks).
    assert si_sdr_db(final[:, 0], denoised[:, 0]) > 8.0
    assert rms_db(final[:, 0]) - rms_db(denoised[:, 0]) > 10.0


def test_kept_asr_views_are_reused_only_for_the_same_bytes_and_restoration(tmp_path):
    """Transcription alone runs again only from views that a finished run kept for these bytes and this restoration."""
    write_wav(tmp_path / "root" / "tape.wav", speech_like(1.0), RATE_HZ)
    options = RunOptions(restore=RestoreOptions(stages=["dc", "denoise", "loudness"]))
    first, _ = _plan(tmp_path, options=options, restore_key="k1")
    restored = pipeline.restore(first, pipeline.extract(first, options), options)
    kept = pipeline.keep_asr_views(first, restored["sources"])
    assert set(kept) >= {"pre_denoise", "denoised", "restored"}
    assert all(sf.info(kept[name]).samplerate == 16_000 for name in ("pre_denoise", "denoised"))
    row = pipeline.record(first, Catalog(tmp_path / "cat"), config_hash="c1", models="m", restored=restored)
    previous = pipeline.previous_summary(row)

    def plan_with(**kwargs):
        return _plan(tmp_path, options=options, previous=previous, **{"config_hash": "c2", "restore_key": "k1", "models": "m", **kwargs})[0]

    carried = plan_with()
    assert carried.carried["restored_in_run"] == "r1" and set(carried.carried["views"]) == {"pre_denoise", "denoised"}
    assert carried.media["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert plan_with(restore_key="k2").carried == {}  # another restoration
    assert plan_with(config_hash="c1").skip_reason.startswith("unchanged")  # nothing changed at all
    assert plan_with(force=True).carried == {}
    spent = plan_with(failures_by_sha={first.sha256: 3})  # transcription kept failing: the budget still holds
    assert spent.carried == {} and spent.skip_reason.startswith("failed 3 times")
    original_view = RunOptions(restore=options.restore, transcribe={"asr_input": "original"})
    assert _plan(tmp_path, options=original_view, previous=previous, config_hash="c2", restore_key="k1")[0].carried == {}
    # A view lost since, or a listing a run stopped before writing, means restoring again.
    view = Path(kept["denoised"])
    audio = view.read_bytes()
    view.unlink()
    assert plan_with().carried == {}
    view.write_bytes(audio)
    assert plan_with().carried
    listing = view.with_name("tape.wav.views.json")
    listing.rename(listing.with_suffix(".aside"))
    assert plan_with().carried == {}
    listing.with_suffix(".aside").rename(listing)
    write_wav(tmp_path / "root" / "tape.wav", speech_like(1.0) * 0.5, RATE_HZ)  # the original changed
    assert plan_with().carried == {}


def test_the_models_a_run_depends_on_are_fingerprinted():
    from archivox.models import gtcrn
    from archivox.tasks.transcribe import TranscribeOptions
    from archivox.tasks.fixity import sha256_file

    default = pipeline.models_fingerprint(RunOptions())
    assert set(default) == {"whisper", "denoiser", "asr_denoiser"}
    assert default["denoiser"]["name"] == "dfn3"
    # The transcript hears GTCRN: its graph is part of the key that says whether transcripts are current.
    assert default["asr_denoiser"] == {"name": "gtcrn", "path": str(gtcrn.graph_path()),
                                       "sha256": sha256_file(gtcrn.graph_path())}
    two_views = RunOptions(transcribe=TranscribeOptions(candidates=("denoised", "mix")))
    assert "asr_denoiser" not in pipeline.models_fingerprint(two_views)
    assert pipeline.models_key(pipeline.models_fingerprint(two_views)) != pipeline.models_key(default)
    # The chain's denoiser is fingerprinted by the model it runs, not always DeepFilterNet3's.
    chain_gtcrn = RunOptions(restore=RestoreOptions(params={"denoise": {"model": "gtcrn"}}), transcribe_enabled=False)
    assert pipeline.models_fingerprint(chain_gtcrn) == {"denoiser": default["asr_denoiser"]}
