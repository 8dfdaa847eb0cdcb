"""What the configuration hash covers: a nightly run redoes an item when, and only when, its outputs would change."""

from __future__ import annotations

import dataclasses

import pytest
from archivox.config import RestoreOptions, RunOptions, _away_from_defaults
from archivox.tasks.chain import RESTORATION_REVISION
from archivox.tasks.transcribe import TRANSCRIPTION_REVISION, TranscribeOptions

# The defaults each revision was measured and released with. The hash holds
# only settings away from their defaults, so a default changed without a
# revision bump would leave archives done with the old one looking up to date.
RESTORE_DEFAULTS_AT_REVISION = (7, {
    "stages": [], "preset": "auto", "params": {}, "channel_policy": "speech", "audio_stream": 0,
    "residual": False, "block_s": 120.0, "long_s": 300.0,
})
TRANSCRIBE_DEFAULTS_AT_REVISION = (8, {
    "model": "tiny.en", "language": None, "device": "auto", "compute_type": "auto", "vad": True,
    "word_timestamps": True, "beam_size": 5, "batch_size": None, "on_language_mismatch": "fallback",
    "fallback_model": "base", "asr_input": "auto", "candidates": ("denoised", "mix", "gtcrn"),
    "stretch_factors": (1.0, 1.05, 0.95), "extra_decodes": ("denoised@1.1", "denoised@0.9", "mix@1.1", "mix@0.9"),
    "combine": "auto", "choose_by": "stretch", "mix_fraction": 0.3,
    "language_window_s": 30.0, "language_switch_probability": 0.8, "flag": True, "skip_no_speech": False,
    "fill_skipped_speech": True, "piece_s": 600.0, "temperature_fallback": True, "quiet_input_dbfs": -30.0,
})
HOW_TO_FIX = ("A default changed, or a setting was added or removed. If what a run writes with the defaults "
              "changed, bump the revision (tasks/chain.py or tasks/transcribe.py) and update this snapshot; "
              "a new setting whose default writes what older releases wrote only needs adding here.")


@pytest.mark.parametrize("options, revision, snapshot", [
    (RestoreOptions(), RESTORATION_REVISION, RESTORE_DEFAULTS_AT_REVISION),
    (TranscribeOptions(), TRANSCRIPTION_REVISION, TRANSCRIBE_DEFAULTS_AT_REVISION),
], ids=["restore", "transcribe"])
def test_defaults_are_those_the_revision_was_released_with(options, revision, snapshot) -> None:
    assert revision == snapshot[0], HOW_TO_FIX
    assert dataclasses.asdict(options) == snapshot[1], HOW_TO_FIX


def test_only_settings_that_change_outputs_change_the_hash() -> None:
    default = RunOptions().config_hash()
    same = [
        RunOptions(device="cuda", max_workers=8, retries=0, failure_budget=10),
        RunOptions(transcribe=TranscribeOptions(beam_size=5, device="cpu", compute_type="int8")),  # defaults, said aloud
        RunOptions(restore=RestoreOptions(preset="auto", block_s=120.0)),
    ]
    assert all(options.config_hash() == default for options in same)
    changed = [
        RunOptions(transcribe=TranscribeOptions(beam_size=4)),
        RunOptions(transcribe=TranscribeOptions(stretch_factors=(1.0,))),
        RunOptions(transcribe=TranscribeOptions(temperature_fallback=False)),
        RunOptions(restore=RestoreOptions(stages=["dc", "loudness"])),
        RunOptions(restore=RestoreOptions(params={"loudness": {"target_lufs": -23.0}})),
        RunOptions(transcribe_enabled=False),
    ]
    hashes = [options.config_hash() for options in changed]
    assert default not in hashes and len(set(hashes)) == len(hashes)


def test_a_release_that_adds_a_setting_keeps_every_hash() -> None:
    @dataclasses.dataclass
    class LaterTranscribeOptions(TranscribeOptions):
        new_setting_s: float = 1.0  # whose default writes what older releases wrote

    assert _away_from_defaults(LaterTranscribeOptions()) == _away_from_defaults(TranscribeOptions()) == {}
    assert _away_from_defaults(LaterTranscribeOptions(beam_size=3)) == {"beam_size": 3}
    assert _away_from_defaults(LaterTranscribeOptions(new_setting_s=2.0)) == {"new_setting_s": 2.0}


def test_the_hash_names_the_stages_this_installation_runs_and_the_revisions() -> None:
    config = RunOptions().output_config()
    assert config["restore"]["stages"] == RestoreOptions().resolved_stages()
    assert config["restore"]["revision"] == RESTORATION_REVISION
    assert config["transcribe"] == {"revision": TRANSCRIPTION_REVISION}
    # An explicit list of every stage is the same run as the default (all of them).
    every = RunOptions(restore=RestoreOptions(stages=RestoreOptions().resolved_stages()))
    assert every.config_hash() == RunOptions().config_hash()
