"""Restoration stages and the chain that composes them.

Audio everywhere in the chain is ``float32`` shaped ``(channels, samples)`` at
the working rate (48 kHz unless a caller says otherwise).

A stage is a callable object in the spirit of pedalboard's plugins: its
parameters are dataclass fields whose names carry their units (``cutoff_hz``,
``gain_db``), and it validates them on construction with messages that give
the value and the valid range. Calling a stage runs ``detect`` and then
``repair``; ``repair`` must return the input unchanged when ``detect`` found
nothing, so that a stage never degrades a recording that did not need it.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from archivox.errors import ConfigError

WORKING_RATE_HZ = 48_000
# Under this sample rate speech fills the band up to Nyquist; at 44.1 kHz
# and above the band over ~8 kHz is nearly empty, and the declick and declip
# settings were first tuned there. Both stages switch to their full-band
# settings under it.
FULL_BAND_RATE_HZ = 32_000

# Bumped by every release that changes what the chain writes for the same
# settings (a stage's algorithm, where a stage runs). It is part of the
# configuration hash, so that a nightly run redoes the items an older release
# restored instead of keeping them as "unchanged" for ever.
# 2: declip and declick at the source's own sample rate (session 4).
# 3: a rate-aware click detector and declip under 32 kHz.
# 4: declip under 32 kHz rebuilds runs from four weighted reconstructions;
#    declick at 32 kHz and above spares faint stop releases and onsets, and
#    under 32 kHz keeps wide clicks just under its bar.
# 5: declip at 32 kHz and above combines its reconstructions as under 32 kHz
#    (RMS of the excesses, dips filled), not by their mean; declick keeps
#    only clear detections in a channel without crackle, and under 32 kHz
#    looks further under its bar in a channel with crackle.
# 6: declick under 32 kHz refills a region fitted to the click (pad of one
#    sample, the most likely pulse covered) and, with crackle, keeps loud
#    clicks near its bar whose core is wide.
# 7: denoise brings a transfer quieter than -30 dBFS (or louder than
#    -16 dBFS) into DeepFilterNet3's range for the model, which had muted
#    the speech of quiet transfers as noise; loudness may raise an item by
#    up to 50 dB (30 before), so that such a transfer reaches its target.
RESTORATION_REVISION = 7

# The stage names are a public contract: users pass them to
# ``archivox restore --stages`` and scripts read them back from ``stages/``.
# This is also the order they run in. Clicks come before hum and hum before
# broadband noise because each later stage estimates its own target from what
# the earlier ones leave behind. Declip runs first: the flat tops it looks
# for are reshaped by any filter (DC high-pass, dehum notches) run before it.
STAGE_ORDER: tuple[str, ...] = ("declip", "dc", "declick", "dehum", "denoise", "eq", "loudness")

# name -> "module:attribute". Lazy so that the torch denoiser is imported
# only when a chain actually uses it.
_STAGE_CLASSES: dict[str, str] = {
    "dc": "archivox.tasks.dc:DCOffset",
    "declick": "archivox.tasks.declick:Declick",
    "dehum": "archivox.tasks.dehum:Dehum",
    "declip": "archivox.tasks.declip:Declip",
    "denoise": "archivox.tasks.denoise:Denoise",
    "eq": "archivox.tasks.eq:SpeechEQ",
    "loudness": "archivox.tasks.loudness:Loudness",
}


@dataclass
class StageOutput:
    """What one stage returns: the repaired audio and what it measured."""

    audio: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class of every restoration stage.

    Subclasses are dataclasses; they set ``name`` and override ``detect`` and
    ``repair``. ``device`` is the compute device the stage ran on ("cpu" for
    pure DSP stages).
    """

    name: ClassVar[str] = ""

    def detect(self, audio: np.ndarray, sample_rate_hz: int) -> dict[str, Any]:
        """Measure the defect this stage repairs. ``audio``: (channels, samples)."""
        return {}

    def repair(
        self, audio: np.ndarray, sample_rate_hz: int, findings: Mapping[str, Any]
    ) -> StageOutput:
        """Return the repaired audio and metrics of what was changed."""
        raise NotImplementedError

    @property
    def device(self) -> str:
        return "cpu"

    def params(self) -> dict[str, Any]:
        """The stage's settings, as recorded in ``stages/``."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        return {}

    def __call__(self, audio: np.ndarray, sample_rate_hz: int = WORKING_RATE_HZ) -> StageOutput:
        audio = as_channels_first(audio)
        findings = self.detect(audio, sample_rate_hz)
        out = self.repair(audio, sample_rate_hz, findings)
        # Findings whose key starts with "_" are working data handed from
        # detect to repair (arrays, analysis objects), not catalog metrics.
        public = {f"found_{k}": v for k, v in findings.items() if not k.startswith("_")}
        metrics = {**public, **{k: v for k, v in out.metrics.items() if not k.startswith("_")}}
        return StageOutput(as_channels_first(out.audio).astype(np.float32, copy=False), metrics)


def as_channels_first(audio: np.ndarray) -> np.ndarray:
    """Accept (samples,) or (channels, samples); return (channels, samples)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio[np.newaxis, :]
    if audio.ndim != 2:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {audio.shape}")
    return audio


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise a ConfigError that names the value and the valid range."""
    if not (low <= value <= high):
        raise ConfigError(f"{name}={value!r} is out of range; valid range is [{low}, {high}]")


@dataclass
class StageRecord:
    """One row of the ``stages/`` catalog, before the item id is attached."""

    stage: str
    position: int
    params: dict[str, Any]
    metrics: dict[str, Any]
    seconds: float
    device: str


@dataclass
class ChainResult:
    audio: np.ndarray
    records: list[StageRecord]
    # The audio as it entered each stage named in ``keep_before`` (and present in the chain).
    before: dict[str, np.ndarray] = field(default_factory=dict)


class Chain:
    """An ordered list of stages, applied one after the other."""

    def __init__(self, stages: Sequence[Stage]):
        self.stages = list(stages)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def __call__(
        self, audio: np.ndarray, sample_rate_hz: int = WORKING_RATE_HZ, keep_before: Iterable[str] = ()
    ) -> ChainResult:
        audio = as_channels_first(audio).astype(np.float32, copy=False)
        keep_before = set(keep_before)
        records: list[StageRecord] = []
        before: dict[str, np.ndarray] = {}
        for position, stage in enumerate(self.stages):
            if stage.name in keep_before:
                before[stage.name] = audio
            started = time.perf_counter()
            out = stage(audio, sample_rate_hz)
            seconds = time.perf_counter() - started
            records.append(
                StageRecord(
                    stage=stage.name,
                    position=position,
                    params=stage.params(),
                    metrics=out.metrics,
                    seconds=seconds,
                    device=stage.device,
                )
            )
            audio = out.audio
        return ChainResult(audio=audio, records=records, before=before)

    def __repr__(self) -> str:
        return f"Chain({self.stages!r})"


def stage_class(name: str) -> type[Stage]:
    """Look a stage class up by its public name."""
    if name not in _STAGE_CLASSES:
        raise ConfigError(f"unknown stage {name!r}; valid stages are {', '.join(STAGE_ORDER)}")
    module_name, attribute = _STAGE_CLASSES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"stage {name!r} is not available in this build of archivox") from exc
        raise
    return getattr(module, attribute)


def available_stages() -> list[str]:
    """Names of the stages this installation can build, in chain order."""
    names = []
    for name in STAGE_ORDER:
        try:
            stage_class(name)
        except ConfigError:
            continue
        names.append(name)
    return names


def parse_stage_list(text: str | Iterable[str]) -> list[str]:
    """``"dc,dehum"`` -> ``["dc", "dehum"]``, validated, duplicates refused."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [n.strip() for n in text]
    names = [n for n in names if n]
    for n in names:
        if n not in _STAGE_CLASSES:
            raise ConfigError(f"unknown stage {n!r}; valid stages are {', '.join(STAGE_ORDER)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a stage is listed twice in {names}")
    return names


def build_stage(name: str, params: Mapping[str, Any] | None = None, **context: Any) -> Stage:
    """Construct a stage from its name and settings.

    ``context`` carries run-wide things a stage may accept (``device`` for the
    neural denoiser); keys a stage does not take are ignored.
    """
    cls = stage_class(name)
    params = dict(params or {})
    field_names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = set(params) - field_names
    if unknown:
        raise ConfigError(
            f"stage {name!r} has no parameter(s) {sorted(unknown)}; valid parameters are {sorted(field_names)}"
        )
    for key, value in context.items():
        if key in field_names and key not in params:
            params[key] = value
    return cls(**params)


def build_chain(
    names: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    **context: Any,
) -> Chain:
    """Build a chain from stage names, always applied in ``STAGE_ORDER``."""
    params = params or {}
    ordered = sorted(parse_stage_list(names), key=STAGE_ORDER.index)
    return Chain([build_stage(n, params.get(n), **context) for n in ordered])
