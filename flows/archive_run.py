"""The ``archive_run`` flow: walk a manifest, restore and transcribe each item, record it.

The flow only orchestrates: each step is a function of
:mod:`archivox.tasks.pipeline` wrapped in a Prefect task. Per item the steps
run as four tasks (probe/extract -> restore -> transcribe -> record), never
one task per segment, and they hand each other paths and small dicts.

Retries: errors that belong to the item (corrupt media, a path outside the
root) are never retried; anything else (a full disk, a killed subprocess)
is retried ``options.retries`` times.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

import archivox
from archivox.catalog.store import Catalog, to_json, utc_now
from archivox.config import RunOptions
from archivox.errors import BadInputError, ConfigError
from archivox.fsutil import output_lock
from archivox.manifest import ManifestItem, read_manifest
from archivox.flows.scaleout import ScaleOut, dask_placement, dispatch_gpu_batch, gpu_steps
from archivox.tasks import pipeline


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient errors, never the item's own faults."""
    try:
        state.result()
    except BadInputError:
        return False
    except Exception:
        return True
    return False


def _step(name: str):
    # Retries and delay are set per run with .with_options(), from RunOptions.
    # NO_CACHE: a rerun's skipping is archivox's own (SHA-256, config and model
    # hashes in the catalog); Prefect need not hash the inputs of every task.
    return task(
        name=name, retry_condition_fn=retry_unless_bad_input, persist_result=False, cache_policy=NO_CACHE
    )


@_step("probe-extract")
def probe_extract_task(item: dict[str, Any], checks: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Fixity, probe and the skip decision (:func:`pipeline.prepare`), then extraction."""
    run_options = RunOptions.from_dict(options)
    plan = pipeline.prepare(ManifestItem(**item), options=run_options, **checks)
    if plan.error or plan.skip_reason:
        return {"plan": plan.to_dict(), "extracted": ""}
    if plan.carried:
        # Only transcription changed: the earlier restoration stands.
        return {"plan": plan.to_dict(), "extracted": "", "restored": pipeline.carried_restoration(plan)}
    try:
        extracted = pipeline.extract(plan, run_options)
    except BadInputError as exc:
        # Undecodable media is the item's fault, not the task's: record it with
        # the plan (its SHA-256 lets the next run recognise the same bytes).
        plan.error, plan.error_kind = pipeline.describe_error(exc)
        return {"plan": plan.to_dict(), "extracted": ""}
    return {"plan": plan.to_dict(), "extracted": extracted}


@_step("restore")
def restore_task(extracted: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    plan = pipeline.ItemPlan.from_dict(extracted["plan"])
    if not extracted["extracted"]:
        return {**extracted, "restored": extracted.get("restored")}
    restored = pipeline.restore(plan, extracted["extracted"], RunOptions.from_dict(options))
    return {**extracted, "restored": restored}


@_step("transcribe")
def transcribe_task(restored: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    run_options = RunOptions.from_dict(options)
    if not restored["restored"] or not run_options.transcribe_enabled:
        return {**restored, "transcript_path": ""}
    plan = pipeline.ItemPlan.from_dict(restored["plan"])
    transcript_path = pipeline.transcribe(plan, restored["restored"]["sources"], run_options)
    return {**restored, "transcript_path": transcript_path}


@_step("record")
def record_task(
    plan: dict[str, Any],
    outcome: dict[str, Any] | None,
    error: str,
    error_kind: str,
    catalog: str,
    config_hash: str,
    models_key: str,
) -> dict[str, Any]:
    outcome = outcome or {}
    plan_obj = pipeline.ItemPlan.from_dict(outcome.get("plan", plan))
    return pipeline.record(
        plan_obj,
        Catalog(catalog),
        config_hash=config_hash,
        models=models_key,
        restored=outcome.get("restored"),
        transcript_path=outcome.get("transcript_path", ""),
        error=error,
        error_kind=error_kind,
    )


def _first_failure(*futures) -> tuple[str, str] | None:
    """(message, kind) of the first failed step of an item, or None."""
    for future in futures:
        state = future.state
        if state.is_failed() or state.is_crashed():
            try:
                state.result()
            except BaseException as exc:  # noqa: BLE001 - whatever the step raised is recorded
                return pipeline.describe_error(exc)
            return f"{state.name}: {state.message}", "transient"
    return None


def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


@flow(name="archive-run", log_prints=True)
def archive_run(
    manifest: str,
    root: str,
    out: str,
    catalog: str,
    options: dict[str, Any] | None = None,
    force: bool = False,
    item_ids: list[str] | None = None,
    scaleout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore and transcribe every item of ``manifest`` (paths relative to ``root``).

    ``options``: a :class:`RunOptions` as a dict. ``item_ids``: only these
    items (a shard of a larger run). ``scaleout``: a
    :class:`~archivox.flows.scaleout.ScaleOut` as a dict (where the GPU steps
    run; empty: in this process). Returns the run's summary.
    """
    run_options = RunOptions.from_dict(options)
    return _run(manifest, root, out, catalog, run_options, force, item_ids, ScaleOut.from_dict(scaleout))


def _run(manifest, root, out, catalog_dir, run_options: RunOptions, force, item_ids, scale: ScaleOut | None = None) -> dict[str, Any]:
    root_path, out_path = Path(root).resolve(), Path(out).resolve()
    if out_path == root_path:
        # Outputs add a suffix and so never replace an original, but they must
        # not mix into the archive that the next scan or run walks.
        raise ConfigError(f"--out {out} is the archive root; choose an output folder outside the archive")
    with output_lock(out_path, exclusive=False):
        return _run_items(manifest, root_path, out_path, catalog_dir, run_options, force, item_ids, scale)


def _run_items(manifest, root_path: Path, out_path: Path, catalog_dir, run_options: RunOptions, force, item_ids,
               scale: ScaleOut | None) -> dict[str, Any]:
    from prefect.runtime import flow_run

    started = utc_now()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    catalog = Catalog(catalog_dir)
    items: list[ManifestItem] = read_manifest(Path(manifest))
    if item_ids is not None:
        wanted = set(item_ids)
        items = [i for i in items if i.item_id in wanted]

    config_hash = run_options.config_hash()
    models = pipeline.models_fingerprint(run_options)
    models_key = pipeline.models_key(models)
    restore_key = pipeline.restore_key(run_options, models)
    previous = pipeline.PreviousRuns.read(catalog)
    options_dict = run_options.to_dict()
    work_root = out_path / pipeline.WORK_FOLDER

    def steps(name_task):
        return name_task.with_options(retries=run_options.retries, retry_delay_seconds=run_options.retry_delay_s)

    probe_extract, restore, transcribe = steps(probe_extract_task), steps(restore_task), steps(transcribe_task)
    progress_id = create_progress_artifact(progress=0.0, description=f"archive run {run_id}: items done")

    scale = scale or ScaleOut()
    # Routed: the GPU steps of the whole batch go to the GPU pool in one flow
    # run after the CPU steps; otherwise every step runs here.
    on_gpu = set(gpu_steps(run_options)) if scale.routed else set()
    chains = {}
    for item in items:
        plan = pipeline.new_plan(item, run_id=run_id, work_root=work_root).to_dict()
        checks = dict(
            run_id=run_id,
            root=str(root_path),
            out=str(out_path),
            work_root=str(work_root),
            previous=pipeline.previous_summary(previous.latest_ok.get(item.item_id)),
            previous_failure=pipeline.previous_summary(previous.latest_failed.get(item.item_id)),
            failures_by_sha=previous.failures_by_sha(item.item_id, config_hash),
            config_hash=config_hash,
            models=models_key,
            force=force,
            restore_key=restore_key,
        )
        futures = [probe_extract.submit(asdict(item), checks, options_dict)]
        if "restore" not in on_gpu:
            with dask_placement(scale, "restore", run_options):
                futures.append(restore.submit(futures[-1], options_dict))
        if not scale.routed:
            with dask_placement(scale, "transcribe", run_options):
                futures.append(transcribe.submit(futures[-1], options_dict))
        chains[futures[-1]] = (plan, futures)

    rows = []

    def record(plan, outcome, error="", error_kind=""):
        rows.append(record_task(plan, outcome, error, error_kind, str(catalog.root), config_hash, models_key))
        update_progress_artifact(progress_id, progress=100.0 * len(rows) / max(len(items), 1))

    for_gpu = []
    for done in as_completed(list(chains)):
        plan, futures = chains[done]
        failure = _first_failure(*futures)
        # The newest plan a finished step returned carries the SHA-256 and
        # media facts that the failure row needs.
        for future in futures:
            if future.state.is_completed():
                plan = future.result()["plan"]
        outcome = done.result() if failure is None else None
        if outcome is not None and on_gpu and (outcome.get("extracted") or outcome.get("restored")):
            for_gpu.append((plan, outcome))
            continue
        if outcome is not None:
            outcome.setdefault("transcript_path", "")
        record(plan, outcome, *(failure or ("", "")))
    if for_gpu:
        results = dispatch_gpu_batch([state for _, state in for_gpu], run_options, scale)
        for (plan, _), (outcome, error, error_kind) in zip(for_gpu, results):
            record(plan, outcome if not error else None, error, error_kind)
    if not items:
        update_progress_artifact(progress_id, progress=100.0)

    summary = _summary(rows)
    shutil.rmtree(work_root / run_id, ignore_errors=True)
    finished = utc_now()
    catalog.append(
        "runs",
        [
            {
                "run_id": run_id,
                "started_at": started,
                "finished_at": finished,
                "archivox_version": archivox.__version__,
                "git_revision": git_revision(),
                "config_hash": config_hash,
                "config": to_json(options_dict),
                "models": to_json(models),
                "manifest": str(Path(manifest).resolve()),
                "items_total": len(rows),
                "items_ok": summary["ok"],
                "items_failed": summary["failed"],
                "items_skipped": summary["skipped"],
                "host": platform.node(),
            }
        ],
    )
    catalog.compact()
    create_table_artifact(
        key="archive-run-summary",
        table=[
            {"item_id": r["item_id"], "path": r["path"], "status": r["status"], "error": r["error"][:200], "seconds": round(r["seconds"], 2)}
            for r in rows
        ],
        description=f"archive run {run_id}: {summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped",
    )
    return {"run_id": run_id, **summary, "items": [{k: r[k] for k in ("item_id", "path", "status", "error")} for r in rows]}


def _summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    for r in rows:
        counts[r["status"]] += 1
    return counts


def task_runner_for(options: RunOptions) -> ThreadPoolTaskRunner:
    """A bounded thread pool (Prefect's default is unbounded)."""
    return ThreadPoolTaskRunner(max_workers=options.max_workers)


def run_archive(
    manifest, root, out, catalog, options: RunOptions | None = None, force: bool = False, item_ids=None,
    scaleout: ScaleOut | None = None, task_runner=None,
) -> dict[str, Any]:
    """Run the flow in this process; a bounded thread pool unless ``task_runner`` is given (e.g. Dask)."""
    options = options or RunOptions()
    bounded = archive_run.with_options(task_runner=task_runner or task_runner_for(options))
    return bounded(
        manifest=str(manifest), root=str(root), out=str(out), catalog=str(catalog),
        options=options.to_dict(), force=force, item_ids=item_ids,
        scaleout=scaleout.to_dict() if scaleout else None,
    )

