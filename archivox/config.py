"""Run settings as plain dataclasses.

A :class:`RunOptions` travels as a JSON-able dict (Prefect flow parameters,
deployment files), so every field is a plain value. ``config_hash`` covers
only what changes the outputs: the device, the worker count and the retry
policy are left out, so moving a run to a GPU machine does not redo an
archive. Of the output settings it holds those set away from their defaults,
plus the code revisions, so that a release which adds a setting does not
redo an archive either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from archivox.errors import ConfigError
from archivox.tasks.chain import (
    RESTORATION_REVISION,
    STAGE_ORDER,
    available_stages,
    check_range,
    parse_stage_list,
)
from archivox.tasks.extract import CHANNEL_POLICIES
from archivox.tasks.transcribe import TRANSCRIPTION_REVISION, TranscribeOptions

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RestoreOptions:
    """How each item is restored.

    ``stages``: names in ``archivox.tasks.chain.STAGE_ORDER``; empty means
    every stage this installation has. ``preset``: named settings for the
    stages ("auto" derives them from each item's diagnosis). ``params``:
    per-stage overrides, e.g. ``{"loudness": {"target_lufs": -23}}``.
    """

    stages: list[str] = field(default_factory=list)
    preset: str = "auto"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    channel_policy: str = "speech"
    audio_stream: int = 0
    residual: bool = False
    # Items longer than long_s are restored block by block (block_s each) from
    # disk, so that memory does not grow with the item's length.
    block_s: float = 120.0
    long_s: float = 300.0

    def __post_init__(self) -> None:
        self.stages = parse_stage_list(self.stages) if self.stages else []
        if self.channel_policy not in CHANNEL_POLICIES:
            raise ConfigError(f"channel_policy={self.channel_policy!r}; valid values are {', '.join(CHANNEL_POLICIES)}")
        unknown = set(self.params) - set(STAGE_ORDER)
        if unknown:
            raise ConfigError(f"params name unknown stage(s) {sorted(unknown)}; valid stages are {', '.join(STAGE_ORDER)}")
        check_range("audio_stream", self.audio_stream, 0, 64)
        self.blocks()  # validates block_s and long_s

    def blocks(self):
        from archivox.tasks.longform import BlockOptions

        return BlockOptions(block_s=self.block_s, long_s=self.long_s)

    def resolved_stages(self) -> list[str]:
        return list(self.stages) if self.stages else available_stages()


@dataclass
class RunOptions:
    """Everything an archive run needs besides its paths."""

    restore: RestoreOptions = field(default_factory=RestoreOptions)
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)
    transcribe_enabled: bool = True
    device: str = "auto"
    max_workers: int = 2
    retries: int = 2
    retry_delay_s: float = 10.0
    failure_budget: int = 3  # failed attempts on the same file and config before runs stop trying it
    ffmpeg_timeout_s: float = 3600.0
    # Keep each item's transcription inputs (16 kHz mono FLAC, under
    # OUT/.archivox-asr-views) so that a change to transcription alone (a new
    # model, other settings) transcribes again without restoring again.
    keep_asr_views: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.restore, dict):
            self.restore = RestoreOptions(**self.restore)
        if isinstance(self.transcribe, dict):
            self.transcribe = TranscribeOptions(**self.transcribe)
        if self.device not in DEVICES:
            raise ConfigError(f"device={self.device!r}; valid values are {', '.join(DEVICES)}")
        check_range("max_workers", self.max_workers, 1, 256)
        check_range("retries", self.retries, 0, 20)
        check_range("failure_budget", self.failure_budget, 1, 1000)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunOptions:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown run option(s) {sorted(unknown)}; valid ones are {sorted(names)}")
        return cls(**data)

    def output_config(self) -> dict[str, Any]:
        """The settings that change what a run writes (hashed into ``config_hash``).

        Only settings away from their defaults are in it, with the stages this
        installation runs and the code revisions. A release that restores or
        transcribes differently with the same settings, a changed default
        included, bumps a revision, which changes the hash, so items done by an
        older release are done again. A release that only adds a setting, whose
        default writes what older releases wrote, leaves every hash as it was
        (tests/test_config.py holds the defaults each revision was measured
        with).
        """
        restore = _away_from_defaults(self.restore)
        restore["stages"] = self.restore.resolved_stages()
        restore["revision"] = RESTORATION_REVISION
        transcribe = {k: v for k, v in _away_from_defaults(self.transcribe).items() if k not in ("device", "compute_type")}
        transcribe["revision"] = TRANSCRIPTION_REVISION
        return {"restore": restore, "transcribe": transcribe if self.transcribe_enabled else None}

    def config_hash(self) -> str:
        return _short_hash(self.output_config())

    def restore_hash(self) -> str:
        """The part of ``config_hash`` that changes the restored audio.

        An item whose restoration this leaves unchanged can be transcribed
        again from its kept ASR views, without restoring it again.
        """
        return _short_hash(self.output_config()["restore"])


def _away_from_defaults(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass whose values differ from a default instance's."""
    values, defaults = dataclasses.asdict(options), dataclasses.asdict(type(options)())
    return {name: value for name, value in values.items() if value != defaults[name]}


def _short_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
