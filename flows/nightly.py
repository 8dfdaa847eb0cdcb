"""The nightly archive run: shard the manifest into batches, run each batch as a deployment.

``archive_nightly`` is what the scheduled deployment of ``deploy/prefect.yaml``
runs. It does no audio work itself: it splits the manifest's item ids into
batches, starts one flow run of the batch deployment (``archive-run/batch``,
the ``archive_run`` flow) per batch on the CPU pool, waits for them, and
reports what each item went through. The batches decide per item what to
redo (new, changed checksum, failed before within the retry budget, stage
configuration or model changed) exactly as a laptop run does, because they
are the same ``archive_run`` flow.

Its report: a table artifact ``archive-nightly`` and a JSON file
``OUT/runs/nightly-<UTC time>-<flow run id>.json``; each batch also writes
its row to the catalog's ``runs`` dataset.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from archivox.catalog.store import Catalog, utc_now
from archivox.config import RunOptions
from archivox.errors import ConfigError
from archivox.flows.scaleout import ScaleOut, split_batches
from archivox.fsutil import atomic_path
from archivox.manifest import read_manifest
from archivox.tasks import pipeline

NIGHTLY_FLOW_NAME = "archive-nightly"
BATCH_DEPLOYMENT = "archive-run/batch"
REPORT_FOLDER = "runs"


def _action(row: dict[str, Any], before: pipeline.PreviousRuns, config_hash: str, models_key: str) -> str:
    """Why an item was (or was not) processed, judged against the catalog as it was before the run."""
    status = row["status"]
    if status == "skipped":
        return "unchanged" if row["error"].startswith("unchanged") else "retry budget spent"
    ok, failed = before.latest_ok.get(row["item_id"]), before.latest_failed.get(row["item_id"])
    if ok is None and failed is None:
        action = "new"
    elif ok is None:
        action = "retried after failure"
    elif ok["sha256"] != row["sha256"]:
        action = "changed (checksum)"
    elif ok["config_hash"] != config_hash:
        action = "settings or archivox revision changed"
    elif ok["models_key"] != models_key:
        action = "model changed"
    else:
        action = "redone (output missing or forced)"
    restored_in_run = row.get("restored_in_run")
    if status == "ok" and isinstance(restored_in_run, str) and restored_in_run not in ("", row["run_id"]):
        action += "; transcribed again, restoration kept"
    return action if status == "ok" else f"{action}; failed"


def _wait(run_ids: list[uuid.UUID], timeout_s: float, poll_s: float) -> dict[uuid.UUID, Any]:
    """Final states of the flow runs ``run_ids`` (polls the API; never longer than ``timeout_s``)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    states: dict[uuid.UUID, Any] = {}
    with get_client(sync_client=True) as client:
        while True:
            for run_id in run_ids:
                if run_id not in states or not states[run_id].is_final():
                    states[run_id] = client.read_flow_run(run_id).state
            if all(s is not None and s.is_final() for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(poll_s)


@flow(name=NIGHTLY_FLOW_NAME, log_prints=True)
def archive_nightly(
    manifest: str,
    root: str,
    out: str,
    catalog: str,
    options: dict[str, Any] | None = None,
    batch_size: int = 25,
    batch_deployment: str = BATCH_DEPLOYMENT,
    scaleout: dict[str, Any] | None = None,
    force: bool = False,
    timeout_s: float = 20 * 3600.0,
    poll_s: float = 5.0,
    prune_missing: bool = False,
) -> dict[str, Any]:
    """Run ``manifest`` as batches of ``batch_size`` items, each a flow run of ``batch_deployment``.

    ``options``: a :class:`RunOptions` as a dict; ``scaleout``: a
    :class:`~archivox.flows.scaleout.ScaleOut` as a dict, passed to every
    batch. Paths must mean the same on every worker (shared storage).
    Items the catalog knows that have left the manifest are reported as
    "gone"; with ``prune_missing`` their outputs are removed and they are
    withdrawn from search after the batches (``archivox prune --delete``),
    unless that would take most of the archive's outputs.
    Returns {"batches": [flow run ids], "items": [{item_id, status, action, worker}], counts}.
    """
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    if batch_deployment.count("/") != 1:
        raise ConfigError(f"batch_deployment={batch_deployment!r}; write FLOW/DEPLOYMENT, e.g. {BATCH_DEPLOYMENT!r}")
    run_options = RunOptions.from_dict(options)
    ScaleOut.from_dict(scaleout)  # refuse a bad setting before any batch starts
    catalog_obj = Catalog(catalog)
    before = pipeline.PreviousRuns.read(catalog_obj)
    config_hash = run_options.config_hash()
    models_key = pipeline.models_key(pipeline.models_fingerprint(run_options))
    item_ids = [item.item_id for item in read_manifest(Path(manifest))]
    batches = split_batches(item_ids, batch_size)
    started = utc_now()

    runs = []
    for number, batch in enumerate(batches):
        # timeout=0: start every batch now and wait for all of them below.
        run = run_deployment(
            batch_deployment,
            parameters={
                "manifest": manifest, "root": root, "out": out, "catalog": catalog,
                "options": run_options.to_dict(), "force": force, "item_ids": batch, "scaleout": scaleout,
            },
            flow_run_name=f"batch-{number + 1:04d}-of-{len(batches):04d}",
            timeout=0,
        )
        runs.append(run.id)
    logger.info("%d items in %d batches of at most %d", len(item_ids), len(batches), batch_size)
    states = _wait(runs, timeout_s, poll_s)

    wanted = {str(r) for r in runs}
    rows = catalog_obj.item_rows()
    rows = rows[rows["run_id"].isin(wanted)].drop_duplicates("item_id", keep="first").to_dict(orient="records")
    done = {r["item_id"] for r in rows}
    report = [
        {
            "item_id": r["item_id"], "path": r["path"], "status": r["status"],
            "action": _action(r, before, config_hash, models_key), "worker": r["worker"], "run_id": r["run_id"],
            "error": (r["error"] or "")[:200], "seconds": round(float(r["seconds"] or 0.0), 2),
        }
        for r in rows
    ]
    # Items whose batch died before recording them (a killed worker): the next run retries them.
    report += [
        {"item_id": i, "path": "", "status": "missing", "action": "batch did not record it", "worker": "", "run_id": "", "error": "", "seconds": 0.0}
        for i in item_ids
        if i not in done
    ]
    report += _departed(Path(manifest), Path(out), catalog_obj, prune_missing, logger)
    counts: dict[str, int] = {}
    for entry in report:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    summary = {
        "started_at": started.isoformat(),
        "finished_at": utc_now().isoformat(),
        "batches": [str(r) for r in runs],
        "batch_states": {str(r): (s.name if s else "unknown") for r, s in states.items()},
        "counts": counts,
        "items": report,
    }
    _write_report(Path(out), summary)
    create_table_artifact(
        key=NIGHTLY_FLOW_NAME,
        table=[{k: e[k] for k in ("item_id", "path", "status", "action", "worker", "error")} for e in report],
        description=f"nightly archive run: {len(batches)} batches; " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
    )
    unfinished = [str(r) for r, s in states.items() if s is None or not s.is_completed()]
    if unfinished:
        # Items of a failed batch are in the report (and the next run retries
        # them); the run itself fails so that monitoring notices.
        raise RuntimeError(f"{len(unfinished)} of {len(runs)} batch flow runs did not complete: {', '.join(unfinished)}")
    return summary


def _departed(manifest: Path, out: Path, catalog: Catalog, prune_missing: bool, logger) -> list[dict[str, Any]]:
    """Report entries for the items the catalog has that left ``manifest``; pruned first when asked."""
    from archivox.errors import ArchivoxError
    from archivox.fsutil import output_lock
    from archivox.prune import find_prunable, guard_majority, prune

    plan = find_prunable(manifest, out, catalog)
    if not (plan.withdrawn or plan.paths or plan.stale_work):
        return []
    status, action = "gone", "left the manifest; `archivox prune` removes its outputs"
    if prune_missing:
        try:
            guard_majority(plan, allow_majority=False)
            # A batch that outlived the wait may still be writing: the lock refuses then.
            with output_lock(out, exclusive=True):
                removed = prune(plan, out, catalog)
        except ArchivoxError as exc:
            logger.warning("not pruning: %s", exc)
            action = f"left the manifest; not pruned: {exc}"
        else:
            logger.info("pruned %d files of %d items that left the manifest", removed, len(plan.withdrawn))
            status, action = "withdrawn", "left the manifest; outputs removed, withdrawn from search"
    return [
        {"item_id": item_id, "path": row["path"], "status": status, "action": action, "worker": "",
         "run_id": "", "error": "", "seconds": 0.0}
        for item_id, row in plan.withdrawn.items()
    ]


def _write_report(out: Path, summary: dict[str, Any]) -> Path:
    from prefect.runtime import flow_run

    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    destination = out / REPORT_FOLDER / f"nightly-{stamp}-{flow_run.get_id() or uuid.uuid4()}.json"
    with atomic_path(destination) as temporary:
        Path(temporary).write_text(json.dumps(summary, indent=1, default=str))
    return destination
