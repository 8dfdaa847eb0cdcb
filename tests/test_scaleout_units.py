"""Scale-out pieces that need no Prefect server: batching, routing decisions, nightly actions, catalog under many writers."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timezone

import pytest

from archivox.catalog.store import Catalog
from archivox.config import RestoreOptions, RunOptions
from archivox.errors import ConfigError
from archivox.flows.nightly import _action
from archivox.flows.scaleout import ScaleOut, gpu_steps, split_batches
from archivox.tasks.pipeline import PreviousRuns


def test_batches_keep_manifest_order_and_cover_every_item_once():
    ids = [f"item-{i}" for i in range(7)]
    batches = split_batches(ids, 3)
    assert batches == [ids[0:3], ids[3:6], ids[6:7]]
    assert split_batches([], 5) == []
    with pytest.raises(ConfigError, match=r"batch_size=0 is outside \[1, 100000\]"):
        split_batches(ids, 0)


def test_scaleout_options_are_checked():
    assert not ScaleOut().routed
    assert ScaleOut.from_dict({"gpu_deployment": "archive-gpu-stages/gpu"}).routed
    with pytest.raises(ConfigError, match="FLOW/DEPLOYMENT"):
        ScaleOut(gpu_deployment="gpu")
    with pytest.raises(ConfigError, match=r"unknown scale-out option\(s\) \['pool'\]"):
        ScaleOut.from_dict({"pool": "x"})
    with pytest.raises(ConfigError, match=r"gpu_timeout_s=0 is outside"):
        ScaleOut(gpu_timeout_s=0)


def test_only_the_denoiser_and_transcription_go_to_the_gpu():
    dsp = RestoreOptions(stages=["dc", "loudness"])
    assert gpu_steps(RunOptions(restore=dsp)) == ["transcribe"]
    assert gpu_steps(RunOptions(restore=dsp, transcribe_enabled=False)) == []
    with_denoiser = RestoreOptions(stages=["dc", "denoise", "loudness"])
    assert gpu_steps(RunOptions(restore=with_denoiser)) == ["restore", "transcribe"]


def _row(item_id, status, sha="a", config="c1", models="m1", error="", run="r0"):
    return {
        "item_id": item_id, "status": status, "sha256": sha, "config_hash": config, "models_key": models,
        "error": error, "run_id": run, "restored_path": "", "error_kind": "transient" if status == "failed" else "",
    }


def test_nightly_report_says_why_each_item_was_processed():
    before = PreviousRuns(
        latest_ok={i: _row(i, "ok") for i in ("same", "changed", "reconfigured", "new-model", "new-asr-model")},
        latest_failed={"flaky": _row("flaky", "failed")},
        failures={("flaky", "a", "c1"): 1},
    )
    now = {
        "brand-new": _row("brand-new", "ok"),
        "changed": _row("changed", "ok", sha="b"),
        "reconfigured": _row("reconfigured", "ok", config="c2"),
        "new-model": _row("new-model", "ok", models="m2"),
        "new-asr-model": {**_row("new-asr-model", "ok", models="m3", run="r1"), "restored_in_run": "r0"},
        "flaky": _row("flaky", "ok"),
        "same": _row("same", "skipped", error="unchanged since run r0"),
    }
    actions = {i: _action(r, before, r["config_hash"], r["models_key"]) for i, r in now.items()}
    assert actions == {
        "brand-new": "new",
        "changed": "changed (checksum)",
        "reconfigured": "settings or archivox revision changed",
        "new-model": "model changed",
        "new-asr-model": "model changed; transcribed again, restoration kept",
        "flaky": "retried after failure",
        "same": "unchanged",
    }
    assert _action(_row("x", "failed", error="boom"), before, "c1", "m1") == "new; failed"


def _writer(root: str, worker: int, n: int) -> None:
    catalog = Catalog(root)
    for i in range(n):
        now = datetime.now(timezone.utc)
        catalog.write_item(
            {"run_id": f"run-{worker}", "item_id": f"w{worker}-{i:04d}", "status": "ok", "worker": f"w{worker}",
             "started_at": now, "finished_at": now, "seconds": 0.0},
            {"stages": [{"run_id": f"run-{worker}", "item_id": f"w{worker}-{i:04d}", "position": 0, "stage": "dc", "seconds": 0.0}]},
        )


def test_catalog_counts_each_row_once_while_workers_write_and_compact(tmp_path):
    """Two writer processes and a compacting reader: no row is ever seen twice or lost."""
    root, per_writer = tmp_path / "catalog", 80
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=_writer, args=(str(root), w, per_writer)) for w in range(2)]
    for w in writers:
        w.start()
    catalog, seen, compactions = Catalog(root), [], 0
    deadline = time.monotonic() + 120
    while any(w.is_alive() for w in writers) and time.monotonic() < deadline:
        compactions += bool(catalog.compact())
        items = catalog.read("items")
        assert not items["item_id"].duplicated().any()
        seen.append(len(items))
    for w in writers:
        w.join(timeout=30)
        assert w.exitcode == 0
    catalog.compact()
    items, stages = catalog.read("items"), catalog.read("stages")
    assert len(items) == len(set(items["item_id"])) == 2 * per_writer
    assert len(stages) == 2 * per_writer
    assert seen == sorted(seen)  # a reader never loses rows it saw before
    assert compactions >= 1 and len(catalog.files("items")) == 1
    assert not [p for p in (root / "items").iterdir() if p.name.startswith(".")]  # no temporaries left
