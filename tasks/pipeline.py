"""The per-item steps of an archive run, as plain functions over paths.

The Prefect flow wraps each step in a task; a worker on another machine, a
Dask worker or a test can call them directly. Steps hand each other paths
and small JSON-able dicts, never audio arrays, so that nothing large crosses
a process or machine boundary and Prefect never hashes audio.

Steps for one item::

    prepare  -> resolve the path inside the root, SHA-256, probe, decide skip
                (or, when only transcription changed, carry the restoration over)
    extract  -> decode to 48 kHz float32 WAV in the item's work folder
    restore  -> diagnosis, chain, restored FLAC (+ pre-denoise WAV, residual)
    transcribe -> faster-whisper over the ASR views (kept as 16 kHz FLAC), sidecar files
    record   -> fixity again, catalog rows, work folder removed
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from archivox.catalog.store import Catalog, to_json, utc_now
from archivox.tasks import extract as extraction
from archivox.tasks.chain import WORKING_RATE_HZ, build_chain
from archivox.tasks.fixity import sha256_file

from archivox.config import RunOptions
from archivox.errors import BadInputError, FixityError
from archivox.fsutil import atomic_path, resolve_inside
from archivox.manifest import ManifestItem

WORK_FOLDER = ".archivox-work"
# Beside the outputs: the audio transcription reads, so that a run that
# changes only transcription need not restore again (see ``carried_restoration``).
ASR_VIEWS_FOLDER = ".archivox-asr-views"
# The chain's intermediate audio that transcription may read; "restored" is
# kept anyway, and "original" is never kept (an option that asks for it
# restores again).
KEPT_VIEWS = ("pre_denoise", "denoised")


@dataclass
class ItemPlan:
    """Everything later steps need to know about one item (JSON-able)."""

    run_id: str
    item_id: str
    rel_path: str
    collection: str
    language: str
    metadata: dict[str, str]
    source_path: str = ""
    sha256: str = ""
    size_bytes: int = 0
    media: dict[str, Any] = field(default_factory=dict)
    restored_path: str = ""
    sidecar_base: str = ""
    asr_views_base: str = ""
    restore_key: str = ""  # see ``restore_key``: what the restored audio depends on
    work_dir: str = ""
    started_at: float = 0.0
    skip_reason: str = ""
    error: str = ""
    error_kind: str = ""
    # Set when an earlier run's restoration is reused and only transcription
    # runs: that run's id, the run that restored the audio, its diagnosis,
    # residual file and kept ASR views.
    carried: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemPlan:
        return cls(**data)


def output_paths(out: Path, rel_path: str) -> tuple[Path, Path]:
    """(restored FLAC, sidecar base) for an item; the original's full name is kept
    so that ``a.wav`` and ``a.mp3`` in one folder never share an output."""
    base = Path(out) / rel_path
    return base.parent / f"{base.name}.flac", base


def models_fingerprint(options: RunOptions) -> dict[str, dict[str, str]]:
    """Name, path and SHA-256 of each model the run's outputs depend on."""
    models: dict[str, dict[str, str]] = {}
    if options.transcribe_enabled:
        from archivox.models.whisper import resolve_model_path

        path = resolve_model_path(options.transcribe.model)
        models["whisper"] = {
            "name": options.transcribe.model,
            "path": str(path),
            "sha256": sha256_file(path / "model.bin", cached=True),
        }
    from archivox.models.denoisers import weights_identity

    if "denoise" in options.restore.resolved_stages():
        name = options.restore.params.get("denoise", {}).get("model", "dfn3")
        models["denoiser"] = {"name": name, **weights_identity(name)}
    if options.transcribe_enabled and "gtcrn" in options.transcribe.views():
        # The transcript hears GTCRN's output too: a new GTCRN means new transcripts, not new restorations.
        models["asr_denoiser"] = {"name": "gtcrn", **weights_identity("gtcrn")}
    return models


def models_key(models: dict[str, dict[str, str]]) -> str:
    return ",".join(f"{k}={v.get('sha256', '')[:16]}" for k, v in sorted(models.items()))


def restore_key(options: RunOptions, models: dict[str, dict[str, str]]) -> str:
    """What the restored audio depends on: the restoration settings and revision, and the denoiser model."""
    denoiser = models.get("denoiser", {}).get("sha256", "")
    return f"{options.restore_hash()}-{denoiser[:16]}"


def asr_views_base(out: Path, rel_path: str) -> Path:
    return Path(out) / ASR_VIEWS_FOLDER / rel_path


def _views_record(base: Path) -> Path:
    return base.with_name(base.name + ".views.json")


def keep_asr_views(plan: ItemPlan, sources: dict[str, str]) -> dict[str, str]:
    """Write the item's ASR views as 16 kHz mono FLAC under ``plan.asr_views_base``; returns ``sources`` pointing at them.

    What transcription hears is these files, in the run that restores the
    item and in any later run that only transcribes it again, so both hear
    the same audio. The record listing them is written last: a run stopped
    half-way leaves views that no later run trusts.
    """
    from archivox.tasks.transcribe import WHISPER_RATE_HZ, load_audio_16k

    base = Path(plan.asr_views_base)
    base.parent.mkdir(parents=True, exist_ok=True)
    record_path = _views_record(base)
    record_path.unlink(missing_ok=True)
    kept = dict(sources)
    for name in KEPT_VIEWS:
        if name in sources:
            path = base.with_name(f"{base.name}.{name}.flac")
            # 16 bits: their noise floor, 96 dB under full scale, lies far
            # under any archive recording's own noise, and each view costs
            # about a quarter of the restored file rather than half. Views
            # come before EQ and loudness and so sit under full scale; a rare
            # peak over it is clipped, which recognition does not notice.
            write_flac(path, load_audio_16k(Path(sources[name])), WHISPER_RATE_HZ, subtype="PCM_16")
            kept[name] = str(path)
    listing = {"sha256": plan.sha256, "restore_key": plan.restore_key,
               "views": {name: Path(kept[name]).name for name in KEPT_VIEWS if name in kept}}
    with atomic_path(record_path) as temporary:
        Path(temporary).write_text(json.dumps(listing))
    return kept


def kept_asr_views(plan: ItemPlan) -> dict[str, str] | None:
    """The views an earlier run kept for these bytes and this restoration ({name: path}), or None."""
    base = Path(plan.asr_views_base)
    try:
        listing = json.loads(_views_record(base).read_text())
    except (OSError, ValueError):
        return None
    if listing.get("sha256") != plan.sha256 or listing.get("restore_key") != plan.restore_key:
        return None
    views = {name: str(base.with_name(file_name)) for name, file_name in listing.get("views", {}).items()}
    return views if all(Path(p).is_file() for p in views.values()) else None


def carried_restoration(plan: ItemPlan) -> dict[str, Any]:
    """The ``restore`` result of an item whose earlier restoration is reused (``plan.carried``)."""
    return {
        "sources": {"restored": plan.restored_path, **plan.carried["views"]},
        "stages": None,  # copied from the earlier run's catalog rows when recorded
        "diagnosis": plan.carried["diagnosis"],
        "residual_path": plan.carried["residual_path"],
    }


def new_plan(item: ManifestItem, *, run_id: str, work_root: Path) -> ItemPlan:
    """The plan of an item before anything is read: what a failure is recorded against."""
    return ItemPlan(
        run_id=run_id,
        item_id=item.item_id,
        rel_path=item.path,
        collection=item.collection,
        language=item.language,
        metadata=dict(item.metadata),
        started_at=time.time(),
        work_dir=str(Path(work_root) / run_id / item.item_id.replace("/", "_")),
    )


_PREVIOUS_KEYS = ("run_id", "sha256", "config_hash", "models_key", "restored_path", "error", "error_kind",
                  "restore_key", "restored_in_run", "residual_path", "media", "diagnosis")


def previous_summary(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fields of an earlier ``items`` row that :func:`prepare` compares, as plain values."""
    if row is None:
        return None
    return {key: ("" if row.get(key) is None or row.get(key) != row.get(key) else str(row[key])) for key in _PREVIOUS_KEYS}


def prepare(
    item: ManifestItem,
    *,
    run_id: str,
    root: Path,
    out: Path,
    work_root: Path,
    previous: dict[str, Any] | None,
    previous_failure: dict[str, Any] | None,
    failures_by_sha: dict[str, int],
    options: RunOptions,
    config_hash: str,
    models: str,
    force: bool,
    restore_key: str = "",
) -> ItemPlan:
    """Check the row, hash the original, probe it and decide whether to skip it.

    An item whose bytes and restoration are unchanged, but whose
    transcription settings or model changed, gets ``plan.carried``: its
    restored audio and kept ASR views are reused and only transcription runs.
    Never raises for a bad item: the problem is written into the plan's
    ``error`` and the item is recorded as failed. Runs inside the first task
    of each item, so that hashing a large archive is spread over the workers.
    """
    plan = new_plan(item, run_id=run_id, work_root=work_root)
    try:
        if item.error:
            raise BadInputError(item.error)
        source = resolve_inside(root, item.path)
        if not source.exists():
            raise BadInputError(f"{item.path}: file not found under the archive root {root}")
        if not source.is_file():
            raise BadInputError(f"{item.path}: not a regular file")
        plan.source_path = str(source)
        plan.size_bytes = source.stat().st_size
        plan.sha256 = sha256_file(source)
        restored, sidecar_base = output_paths(out, item.path)
        plan.restored_path, plan.sidecar_base = str(restored), str(sidecar_base)
        plan.asr_views_base = str(asr_views_base(out, item.path))
        plan.restore_key = restore_key
        if not force and previous is not None:
            same = (
                previous["sha256"] == plan.sha256
                and previous["config_hash"] == config_hash
                and previous["models_key"] == models
            )
            # This run's output path, not the one recorded: a catalog may serve
            # a moved output folder, or another one where nothing exists yet.
            if same and restored.is_file():
                plan.skip_reason = "unchanged since run " + str(previous["run_id"])
                return plan
        if (
            not force
            and previous_failure is not None
            and previous_failure["error_kind"] == "bad_input"
            and previous_failure["sha256"] == plan.sha256
            and previous_failure["config_hash"] == config_hash
        ):
            # The same bytes failed as bad input before: decoding them again
            # would fail the same way, so the error is carried forward.
            raise BadInputError(f"{previous_failure['error']} (file unchanged since run {previous_failure['run_id']}; not retried)")
        failures = failures_by_sha.get(plan.sha256, 0)
        if not force and failures >= options.failure_budget:
            plan.skip_reason = f"failed {failures} times with this file and configuration; use --force to try again"
            return plan
        if not force and previous is not None and _restoration_reusable(plan, previous, options):
            return plan
        plan.media = extraction.probe(source).to_dict()
        if plan.media["duration_s"] <= 0.0 and plan.size_bytes < 64:
            raise BadInputError(f"{item.path}: the audio stream is empty")
    except BadInputError as exc:
        plan.error, plan.error_kind = str(exc), "bad_input"
    return plan


def _restoration_reusable(plan: ItemPlan, previous: dict[str, Any], options: RunOptions) -> bool:
    """Fill ``plan.carried`` when only transcription has to run again; True then."""
    if not (options.transcribe_enabled and options.keep_asr_views and plan.restore_key
            and "original" not in options.transcribe.views()):
        return False
    if previous["sha256"] != plan.sha256 or previous["restore_key"] != plan.restore_key:
        return False
    if Path(previous["restored_path"]).resolve() != Path(plan.restored_path).resolve() or not Path(plan.restored_path).is_file():
        return False
    views = kept_asr_views(plan)
    if views is None:
        return False
    plan.media = json.loads(previous["media"] or "{}")
    plan.carried = {
        "run_id": previous["run_id"],
        "restored_in_run": previous["restored_in_run"] or previous["run_id"],
        "diagnosis": json.loads(previous["diagnosis"] or "{}"),
        "residual_path": previous["residual_path"],
        "views": views,
    }
    return True


def extract(plan: ItemPlan, options: RunOptions) -> str:
    """Decode the original to a float32 48 kHz WAV in the item's work folder; returns its path.

    See ``extract_audio``; repairs made at the source's rate are named in
    ``plan.media["source_rate_repairs"]`` for the restoration.
    """
    destination = Path(plan.work_dir) / "original.wav"
    channel_info, repairs = extract_audio(
        Path(plan.source_path), destination, options, int(plan.media.get("sample_rate_hz") or 0),
        long_item=float(plan.media.get("duration_s") or 0.0) > options.restore.long_s)
    if repairs:
        plan.media["source_rate_repairs"] = repairs
    samples = channel_info.pop("samples")
    plan.media.update(channel_info)
    if samples < WORKING_RATE_HZ // 100:
        destination.unlink(missing_ok=True)
        raise BadInputError(f"{plan.rel_path}: only {samples} samples of audio; too short to restore")
    return str(destination)


def extract_audio(source: Path, destination: Path, options: RunOptions, source_rate_hz: int,
                  long_item: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Decode ``source`` to a mono float32 WAV at 48 kHz; (channel information with ``samples``, source-rate repairs).

    Streams through files, so an item's length does not bound what a worker
    can take. A source recorded at another rate is first decoded at its own
    rate, and declip and declick (those of the run's stages; with the
    ``auto`` preset, those that find something) run there: see
    ``archivox.tasks.source_rate``; so does declip on a ``long_item`` at
    48 kHz. The repaired audio is brought to 48 kHz beside ``destination``
    ("repaired.wav") and described by the second value (path, stage rows),
    else None; ``destination`` stays as recorded.
    """
    from archivox.tasks import source_rate

    destination.parent.mkdir(parents=True, exist_ok=True)
    common = {"stream_index": options.restore.audio_stream, "timeout_s": options.ffmpeg_timeout_s}
    names = options.restore.resolved_stages()
    stages = source_rate.stages_at_source_rate(names, _preset_params(options), source_rate_hz, long_item)
    if not stages:
        channel_info = extraction.decode_to_file(source, destination, channel_policy=options.restore.channel_policy,
                                                 rate_hz=WORKING_RATE_HZ, **common)
        return channel_info, None
    work = destination.parent
    # At the working rate (a long item) the original itself is what is repaired.
    at_working_rate = source_rate_hz == WORKING_RATE_HZ
    at_source_rate = destination if at_working_rate else work / f".{destination.stem}.source_rate.wav"
    repaired_at_source_rate = work / f".{destination.stem}.source_rate_repaired.wav"
    repairs = None
    try:
        channel_info = extraction.decode_to_file(source, at_source_rate, channel_policy=options.restore.channel_policy,
                                                 rate_hz=None, **common)
        if options.restore.preset == "auto":
            # Like the auto preset at 48 kHz: a stage runs where it finds its defect.
            found = source_rate.defects_at_source_rate(at_source_rate, stages)
            stages = [stage for stage in stages if found[stage.name]]
        if stages:
            records, peak_dbfs = source_rate.repair_file(at_source_rate, repaired_at_source_rate, stages)
            # Rebuilt peaks may pass full scale; like the declip stage, keep
            # them its headroom under it, with one gain for the whole item.
            headroom_db = next((s.headroom_db for s in stages if s.name == "declip"), 0.0)
            gain_db = min(0.0, -headroom_db - peak_dbfs)
            repaired = work / "repaired.wav"
            # ffmpeg brings both versions to the working rate with the resampler a direct decode uses.
            extraction.decode_to_file(repaired_at_source_rate, repaired, channel_policy="mix",
                                      rate_hz=WORKING_RATE_HZ, gain_db=gain_db, **common)
            for record in records:
                record.metrics["scaled_db"] = round(gain_db, 2)
            repairs = {"path": str(repaired), "stages": [asdict(r) for r in records]}
        if not at_working_rate:
            channel_info["samples"] = extraction.decode_to_file(
                at_source_rate, destination, channel_policy="mix", rate_hz=WORKING_RATE_HZ, **common)["samples"]
    finally:
        if not at_working_rate:
            at_source_rate.unlink(missing_ok=True)
        repaired_at_source_rate.unlink(missing_ok=True)
    return channel_info, repairs


def _preset_params(options: RunOptions) -> dict[str, dict[str, Any]]:
    """Per-stage settings before any diagnosis: the named preset's (``auto`` starts from ``speech``), then ``--set``."""
    from archivox.tasks.presets import stage_params_for

    preset = options.restore.preset
    params = stage_params_for("speech" if preset == "auto" else preset)
    for name, overrides in options.restore.params.items():
        params.setdefault(name, {}).update(overrides)
    return params


def write_wav(destination: Path, audio: np.ndarray, rate_hz: int) -> None:
    """Float32 WAV for work files (lossless between steps), written atomically."""
    with atomic_path(Path(destination)) as temporary:
        sf.write(temporary, np.asarray(audio).T, rate_hz, subtype="FLOAT", format="WAV")


def write_flac(destination: Path, audio: np.ndarray, rate_hz: int, subtype: str = "PCM_24") -> None:
    """24-bit FLAC for deliverables (``subtype`` "PCM_16" for work that needs less), written atomically."""
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0 - 2.0**-23)
    with atomic_path(Path(destination)) as temporary:
        sf.write(temporary, clipped.T, rate_hz, subtype=subtype, format="FLAC")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.T.copy(), rate_hz


def restore(plan: ItemPlan, extracted_path: str, options: RunOptions) -> dict[str, Any]:
    """Diagnose the item, run the chain, write the restored FLAC.

    Returns {"sources": {name: path}, "stages": [stage records], "diagnosis": {...},
    "residual_path": str} for the later steps.
    """
    blocks = options.restore.blocks()
    info = sf.info(str(extracted_path))
    if blocks.is_long(info.frames, info.samplerate):
        return _restore_long(plan, extracted_path, options, blocks)
    repairs = _source_rate_repairs(plan)
    audio, rate_hz = read_audio(repairs["path"] if repairs else extracted_path)
    started = time.perf_counter()
    diagnosis, stage_names, stage_params = plan_stages(audio, rate_hz, options)
    # Kept with the item, as each stage's seconds are: the diagnosis is analysis,
    # and a run's time outside the stages is otherwise read as overhead.
    diagnosis["seconds"] = round(time.perf_counter() - started, 3)
    _note_source_rate(diagnosis, plan)
    chain = build_chain(_not_repaired_yet(stage_names, repairs), stage_params, device=options.device)
    work = Path(plan.work_dir)
    sources = {"original": extracted_path}
    # The transcription step may prefer the audio before broadband denoising
    # (its artefacts hurt recognition); the residual is what the repairing
    # stages took away, before EQ and loudness change the level.
    finishing = [n for n in chain.names if n in _FINISHING_STAGES][:1]
    result = chain(audio, rate_hz, keep_before=["denoise", *finishing])
    if "denoise" in result.before:
        write_wav(work / "pre_denoise.wav", result.before["denoise"], rate_hz)
        sources["pre_denoise"] = str(work / "pre_denoise.wav")
        if finishing:
            # The denoiser's output before EQ and loudness reshape it: the ASR view
            # that transcription prefers (see archivox.tasks.transcribe).
            write_wav(work / "denoised.wav", result.before[finishing[0]], rate_hz)
            sources["denoised"] = str(work / "denoised.wav")
    write_flac(Path(plan.restored_path), result.audio, rate_hz)
    sources["restored"] = plan.restored_path
    if "denoise" in result.before and not finishing:
        sources["denoised"] = plan.restored_path
    residual_path = ""
    if options.restore.residual:
        repaired = result.before[finishing[0]] if finishing else result.audio
        residual_path = str(Path(plan.sidecar_base).with_name(Path(plan.sidecar_base).name + ".residual.flac"))
        recorded = read_audio(extracted_path)[0] if repairs else audio
        write_flac(Path(residual_path), recorded - repaired, rate_hz)
    return {
        "sources": sources,
        "stages": _stage_rows(result.records, repairs, diagnosis),
        "diagnosis": diagnosis,
        "residual_path": residual_path,
    }


def _source_rate_repairs(plan: ItemPlan) -> dict[str, Any] | None:
    """What ``extract`` repaired at the source's rate (path of the repaired audio, stage rows), if anything."""
    found = plan.media.get("source_rate_repairs")
    return found if found and Path(found["path"]).is_file() else None


def _note_source_rate(diagnosis: dict[str, Any], plan: ItemPlan) -> None:
    source_rate_hz = plan.media.get("sample_rate_hz") or None
    if source_rate_hz and source_rate_hz != diagnosis.get("sample_rate_hz"):
        diagnosis["source_rate_hz"] = int(source_rate_hz)


def _not_repaired_yet(stage_names: list[str], repairs: dict[str, Any] | None) -> list[str]:
    done = {row["stage"] for row in repairs["stages"]} if repairs else set()
    return [name for name in stage_names if name not in done]


def _stage_rows(records, repairs: dict[str, Any] | None, diagnosis: dict[str, Any]) -> list[dict[str, Any]]:
    from archivox.tasks.source_rate import merged_into_chain

    rows = [asdict(r) for r in records]
    return merged_into_chain(repairs["stages"], rows, diagnosis) if repairs else rows


def _restore_long(plan: ItemPlan, extracted_path: str, options: RunOptions, blocks) -> dict[str, Any]:
    """``restore`` for items longer than ``options.restore.long_s``: same outputs, bounded memory."""
    from archivox.tasks.longform import diagnose_excerpts, run_chain_from_file

    repairs = _source_rate_repairs(plan)
    chain_input = Path(repairs["path"]) if repairs else Path(extracted_path)
    started = time.perf_counter()
    diagnosis = diagnose_excerpts(chain_input)
    stage_names, stage_params = stages_from_diagnosis(diagnosis, options)
    diagnosis_seconds = round(time.perf_counter() - started, 3)
    chain = build_chain(_not_repaired_yet(stage_names, repairs), stage_params, device=options.device)
    work = Path(plan.work_dir)
    finishing = [n for n in chain.names if n in _FINISHING_STAGES][:1]
    residual_path = ""
    if options.restore.residual:
        residual_path = str(Path(plan.sidecar_base).with_name(Path(plan.sidecar_base).name + ".residual.flac"))
    result = run_chain_from_file(
        chain,
        chain_input,
        Path(plan.restored_path),
        work,
        keep_before={"denoise": work / "pre_denoise.wav",
                     **({finishing[0]: work / "denoised.wav"} if finishing and "denoise" in chain.names else {})},
        residual=((finishing[0] if finishing else "", Path(residual_path)) if residual_path else None),
        options=blocks,
    )
    sources = {"original": extracted_path, "restored": plan.restored_path}
    if "denoise" in result.written:
        sources["pre_denoise"] = str(result.written["denoise"])
        sources["denoised"] = str(result.written[finishing[0]]) if finishing else plan.restored_path
    diagnosis_row = {**diagnosis.to_dict(), "seconds": diagnosis_seconds}
    _note_source_rate(diagnosis_row, plan)
    return {
        "sources": sources,
        "stages": _stage_rows(result.records, repairs, diagnosis_row),
        "diagnosis": diagnosis_row,
        "residual_path": residual_path,
    }


# Stages that shape the sound rather than repair it.
_FINISHING_STAGES = ("eq", "loudness")


def plan_stages(audio: np.ndarray, rate_hz: int, options: RunOptions) -> tuple[dict[str, Any], list[str], dict[str, dict]]:
    """(diagnosis as a dict, stage names, per-stage parameters) for one item.

    The preset chooses settings (``auto`` derives them from the diagnosis and
    drops repair stages for defects the diagnosis did not find); stages the
    user named with ``--stages`` always run, and ``--set`` overrides settings.
    """
    from archivox.tasks.diagnose import diagnose

    diagnosis = diagnose(audio, rate_hz)
    names, params = stages_from_diagnosis(diagnosis, options)
    return diagnosis.to_dict(), names, params


def stages_from_diagnosis(diagnosis, options: RunOptions) -> tuple[list[str], dict[str, dict]]:
    """(stage names, per-stage parameters) for an item with this ``Diagnosis``."""
    from archivox.tasks.presets import stage_params_for, stages_for

    if options.restore.stages:
        names = list(options.restore.stages)
    else:
        worth_running = set(stages_for(options.restore.preset, diagnosis)) | {"denoise"}
        names = [n for n in options.restore.resolved_stages() if n in worth_running]
    params = stage_params_for(options.restore.preset, diagnosis)
    for stage, overrides in options.restore.params.items():
        params[stage] = {**params.get(stage, {}), **overrides}
    return names, params


def transcribe(plan: ItemPlan, sources: dict[str, str], options: RunOptions) -> str:
    """Transcribe the restored audio, write sidecars; returns the transcript JSON path.

    With ``options.keep_asr_views`` (and ``plan.restore_key`` to file them
    under), the views are first kept as 16 kHz FLAC and transcribed from
    there; an item carried over from an earlier run already points at them.
    """
    from archivox.tasks.exports import write_sidecars
    from archivox.tasks.transcribe import transcribe_item

    if options.keep_asr_views and plan.restore_key and plan.asr_views_base and not plan.carried:
        sources = keep_asr_views(plan, sources)

    transcribe_options = options.transcribe
    if options.device != "auto" and transcribe_options.device == "auto":
        from dataclasses import replace

        transcribe_options = replace(transcribe_options, device=options.device)
    transcript = transcribe_item(
        {name: Path(p) for name, p in sources.items()}, transcribe_options, language=plan.language or None
    )
    written = write_sidecars(transcript, Path(plan.sidecar_base))
    return str(written["json"])


def record(
    plan: ItemPlan,
    catalog: Catalog,
    *,
    config_hash: str,
    models: str,
    restored: dict[str, Any] | None = None,
    transcript_path: str = "",
    error: str = "",
    error_kind: str = "",
) -> dict[str, Any]:
    """Verify fixity, write the item's catalog rows, remove its work folder.

    Returns the ``items`` row (as written). A failure anywhere before is
    passed in ``error`` (see :func:`describe_error`) and recorded; the original is re-hashed in every case
    where it was hashed before, so a run can prove it left originals alone.
    """
    status, error_text, kind = "ok", plan.error, plan.error_kind
    if plan.skip_reason:
        status = "skipped"
    if error and not error_text:
        error_text, kind = error, error_kind or "transient"
    if plan.sha256 and plan.source_path:
        try:
            after = sha256_file(Path(plan.source_path))
        except OSError as exc:
            after = f"unreadable: {exc}"
        if after != plan.sha256:
            mismatch = FixityError(
                f"{plan.rel_path}: the original changed during processing (SHA-256 {plan.sha256[:12]}... before, {after[:12]}... after)"
            )
            error_text, kind = (f"{error_text}; {mismatch}" if error_text else str(mismatch)), "fixity"
    if error_text:
        status = "failed"

    children: dict[str, list[dict[str, Any]]] = {}
    transcript = None
    if status == "ok" and restored and plan.carried:
        # The catalog keeps one set of stage rows per run that lists the item,
        # so queries over a run's rows see how its audio was made.
        earlier = catalog.rows_for("stages", run_id=plan.carried["run_id"], item_id=plan.item_id)
        children["stages"] = [{**r, "run_id": plan.run_id} for r in earlier]
    elif status == "ok" and restored:
        children["stages"] = [
            {
                "run_id": plan.run_id,
                "item_id": plan.item_id,
                "position": r["position"],
                "stage": r["stage"],
                "params": to_json(r["params"]),
                "metrics": to_json(r["metrics"]),
                "seconds": r["seconds"],
                "device": r["device"],
            }
            for r in restored["stages"]
        ]
    if status == "ok" and transcript_path:
        from archivox.tasks.exports import read_json

        transcript = read_json(Path(transcript_path))
        children["segments"], children["words"] = transcript_rows(plan, transcript)

    finished = utc_now()
    row = {
        "run_id": plan.run_id,
        "item_id": plan.item_id,
        "path": plan.rel_path,
        "collection": plan.collection,
        "language": plan.language,
        "sha256": plan.sha256,
        "size_bytes": plan.size_bytes,
        "duration_s": plan.media.get("duration_s"),
        "status": status,
        "error": error_text,
        "error_kind": kind,
        "restored_path": plan.restored_path if status != "failed" else "",
        "transcript_path": transcript_path if status == "ok" else "",
        "residual_path": (restored or {}).get("residual_path", ""),
        "config_hash": config_hash,
        "models_key": models,
        "media": to_json(plan.media),
        "diagnosis": to_json((restored or {}).get("diagnosis", {})),
        "language_detected": transcript.language if transcript else "",
        "language_probability": transcript.language_probability if transcript else None,
        "asr_candidate": transcript.candidate if transcript else "",
        "asr_evidence": to_json(transcript.evidence) if transcript else "",
        "model_sha256": transcript.model_sha256 if transcript else "",
        "restore_key": plan.restore_key if status == "ok" else "",
        "restored_in_run": (plan.carried.get("restored_in_run") or plan.run_id) if status == "ok" else "",
        "metadata": to_json(plan.metadata),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "started_at": _timestamp(plan.started_at) if plan.started_at else finished,
        "finished_at": finished,
        "seconds": time.time() - plan.started_at if plan.started_at else 0.0,
    }
    if status == "skipped" and plan.skip_reason:
        row["error"] = plan.skip_reason
    catalog.write_item(row, children)
    if plan.work_dir:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    return row


def transcript_rows(plan: ItemPlan, transcript) -> tuple[list[dict], list[dict]]:
    segments, words = [], []
    for segment in transcript.segments:
        segments.append(
            {
                "run_id": plan.run_id,
                "item_id": plan.item_id,
                "segment_index": segment.index,
                "start_s": segment.start_s,
                "end_s": segment.end_s,
                "text": segment.text,
                "avg_logprob": segment.avg_logprob,
                "no_speech_prob": segment.no_speech_prob,
                "compression_ratio": segment.compression_ratio,
                "language": segment.language or transcript.language,
                "flags": list(segment.flags),
                "candidate": segment.candidate or transcript.candidate,
            }
        )
        for word_index, word in enumerate(segment.words):
            words.append(
                {
                    "run_id": plan.run_id,
                    "item_id": plan.item_id,
                    "segment_index": segment.index,
                    "word_index": word_index,
                    "start_s": word.start_s,
                    "end_s": word.end_s,
                    "word": word.word,
                    "probability": word.probability,
                    "agreement": word.agreement,
                }
            )
    return segments, words


def describe_error(error: BaseException) -> tuple[str, str]:
    """(message, kind) for the catalog; kind is "bad_input", "fixity" or "transient"."""
    if isinstance(error, BadInputError):
        return str(error), "bad_input"
    if isinstance(error, FixityError):
        return str(error), "fixity"
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    place = f" (at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno})" if where else ""
    return f"{type(error).__name__}: {error}{place}", "transient"


def _timestamp(epoch_s: float):
    from datetime import datetime

    return datetime.fromtimestamp(epoch_s, UTC)


@dataclass
class PreviousRuns:
    """What earlier runs recorded, as far as deciding what to redo needs."""

    latest_ok: dict[str, dict[str, Any]]  # item_id -> newest ok row
    latest_failed: dict[str, dict[str, Any]]  # item_id -> newest failed row
    failures: dict[tuple[str, str, str], int]  # (item_id, sha256, config_hash) -> failed attempts

    @classmethod
    def read(cls, catalog: Catalog) -> PreviousRuns:
        rows = catalog.item_rows()

        def newest(status: str) -> dict[str, dict[str, Any]]:
            chosen = rows[rows["status"] == status].drop_duplicates("item_id", keep="first")
            return {r["item_id"]: r for r in chosen.to_dict(orient="records")}

        failed = rows[rows["status"] == "failed"]
        counts = failed.groupby(["item_id", "sha256", "config_hash"]).size().to_dict() if len(failed) else {}
        return cls(newest("ok"), newest("failed"), {tuple(k): int(v) for k, v in counts.items()})

    def failures_by_sha(self, item_id: str, config_hash: str) -> dict[str, int]:
        return {sha: n for (iid, sha, cfg), n in self.failures.items() if iid == item_id and cfg == config_hash}

