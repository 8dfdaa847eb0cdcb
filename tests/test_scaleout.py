"""Scale-out on a real Prefect server: deployments from deploy/prefect.yaml, two process workers, Dask.

One Prefect server (SQLite, loopback only, its own PREFECT_HOME) and two
``prefect worker`` processes are started for the module and stopped at its
end. The archive is synthetic speech (tests/signals.speech_archive); the
chain is restricted to dc + loudness and transcription uses tiny.en so that
the module stays within its time budget on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from signals import REPO_ROOT, speech_archive, white_noise, word_error_rate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(540)]

POOL = "archivox-test-pool"
WORKERS = ("worker-a", "worker-b")
TIMEZONE = "Europe/Berlin"
START_TIMEOUT_S = 150.0
RUN_TIMEOUT_S = 300.0
# Whisper's decoding of one file varies a little with what else runs in the
# same batch and thread pool, so transcripts of separate runs are compared
# by word error rate, not character for character.
SAME_TRANSCRIPT_WER = 0.4  # transcripts of different sentences here are ~1.0 apart


def _run_options():
    from archivox.config import RestoreOptions, RunOptions
    from archivox.tasks.transcribe import TranscribeOptions

    # One speed: these tests are about where the work runs, and each view at
    # three speeds would triple their decoding on CI's two cores.
    return RunOptions(restore=RestoreOptions(stages=["dc", "loudness"]),
                      transcribe=TranscribeOptions(stretch_factors=(1.0,)), retries=0, max_workers=2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


def _stop(process: subprocess.Popen) -> None:
    """Stop a process group started here: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Prefect server, the deployments of deploy/prefect.yaml and two workers on one process pool."""
    base = tmp_path_factory.mktemp("scaleout")
    archive = base / "archive"
    manifest = speech_archive(archive, 6, seed=1)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",  # the workers' "submitting flow run" lines say who ran what
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        "ARCHIVOX_PROJECT_DIR": str(REPO_ROOT),
        "ARCHIVOX_TIMEZONE": TIMEZONE,
        "ARCHIVOX_CPU_POOL": POOL,
        "ARCHIVOX_GPU_POOL": POOL,  # no GPU machine here: the GPU stage group runs on the same workers
        "ARCHIVOX_MANIFEST": str(manifest),
        "ARCHIVOX_ROOT": str(archive),
        "ARCHIVOX_OUT": str(base / "out"),
        "ARCHIVOX_CATALOG": str(base / "catalog"),
    }
    Path(env["PREFECT_HOME"]).mkdir()
    processes: list[subprocess.Popen] = []
    logs = {"server": base / "server.log", **{w: base / f"{w}.log" for w in WORKERS}}

    def start(args: list[str], log: Path) -> subprocess.Popen:
        handle = open(log, "w")
        process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        handle.close()
        processes.append(process)
        return process

    prefect = str(Path(sys.executable).with_name("prefect"))
    try:
        server = start([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"], logs["server"])
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not become healthy in {START_TIMEOUT_S:.0f} s:\n{_tail(logs['server'])}")
            time.sleep(0.5)
        deployed = subprocess.run(
            [sys.executable, "-m", "archivox.flows.deploy", "--prefect-file", "deploy/prefect.yaml", "--all"],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        for name in WORKERS:
            start([prefect, "worker", "start", "--pool", POOL, "--name", name, "--limit", "2"], logs[name])
        yield SimpleNamespace(base=base, archive=archive, manifest=manifest, api_url=api_url, env=env, logs=logs,
                              out=Path(env["ARCHIVOX_OUT"]), catalog=Path(env["ARCHIVOX_CATALOG"]))
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture
def api(cluster):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: cluster.api_url}):
        yield cluster


def _nightly(cluster, **parameters) -> dict:
    """Run the nightly deployment as its schedule would (with test-sized batches and options)."""
    from prefect.deployments import run_deployment

    before = set((cluster.out / "runs").glob("nightly-*.json"))
    run = run_deployment(
        "archive-nightly/nightly",
        parameters={"options": _run_options().to_dict(), "batch_size": 2, "scaleout": {}, "poll_s": 1.0, **parameters},
        timeout=RUN_TIMEOUT_S,
        poll_interval=1,
    )
    logs = "\n".join(f"--- {k}\n{_tail(p, 25)}" for k, p in cluster.logs.items() if k != "server")
    assert run.state is not None and run.state.is_completed(), f"nightly run ended {run.state}:\n{logs}"
    new = set((cluster.out / "runs").glob("nightly-*.json")) - before
    assert len(new) == 1, new
    return json.loads(new.pop().read_text())


def _who_ran(cluster, run_id: str) -> set[str]:
    """The workers whose log says they submitted flow run ``run_id`` and were not turned away."""
    ran = set()
    for name in WORKERS:
        text = cluster.logs[name].read_text(errors="replace")
        if re.search(rf"submitting flow run '{run_id}'", text) and not re.search(rf"Aborted submission of flow run '{run_id}'", text):
            ran.add(name)
    return ran


@pytest.fixture(scope="module")
def first_night(cluster):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: cluster.api_url}):
        return _nightly(cluster)


def test_deployment_carries_the_nightly_schedule(api):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("archive-nightly/nightly")
        batch = client.read_deployment_by_name("archive-run/batch")
        gpu = client.read_deployment_by_name("archive-gpu-stages/gpu")
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.schedules[0].schedule.timezone == TIMEZONE
    assert nightly.schedules[0].active
    assert nightly.parameters["manifest"] == str(api.manifest)
    assert nightly.parameters["scaleout"] == {"gpu_deployment": "archive-gpu-stages/gpu"}
    assert {nightly.work_pool_name, batch.work_pool_name, gpu.work_pool_name} == {POOL}
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(POOL).type == "process"


def test_kubernetes_gpu_job_template_is_accepted_by_the_server(api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((REPO_ROOT / "deploy" / "k8s-gpu-job-template.json").read_text())
    with get_client(sync_client=True) as client:
        # The server refuses a template whose placeholders have no variable.
        pool = client.create_work_pool(WorkPoolCreate(name="archivox-gpu-k8s", type="kubernetes", base_job_template=template))
    container = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_nightly_run_processes_every_item_once_on_both_workers(api, first_night):
    from archivox.catalog.store import Catalog

    catalog = Catalog(api.catalog)
    items = catalog.read("items")
    assert sorted(items["item_id"]) == [f"item-{i:03d}" for i in range(6)]  # each once
    assert set(items["status"]) == {"ok"}, items[["item_id", "status", "error"]].to_string()
    assert len(first_night["batches"]) == 3 and set(items["run_id"]) == set(first_night["batches"])
    assert {e["action"] for e in first_night["items"]} == {"new"}
    # Every item was transcribed and its restored file written by a batch.
    segments = catalog.read("segments")
    assert set(segments["item_id"]) == set(items["item_id"])
    assert all(Path(p).is_file() for p in items["restored_path"])
    ran_by = {run_id: _who_ran(api, run_id) for run_id in first_night["batches"]}
    assert all(len(who) == 1 for who in ran_by.values()), ran_by
    assert set().union(*ran_by.values()) == set(WORKERS), ran_by
    assert len(catalog.read("runs")) == 3  # one row per batch


def test_second_night_processes_only_the_changed_and_the_added_item(api, first_night):
    from archivox.catalog.store import Catalog

    changed = api.archive / "tape-003.wav"
    audio, rate_hz = sf.read(changed, dtype="float32")
    sf.write(changed, audio + white_noise(len(audio) / rate_hz, -50.0, seed=9, rate_hz=rate_hz)[0, : len(audio)], rate_hz, subtype="PCM_16")
    shutil.copy(api.archive / "tape-001.wav", api.archive / "tape-new.wav")
    # tape-005 leaves the archive; the night prunes it (prune_missing).
    lines = [line for line in api.manifest.read_text().splitlines(keepends=True) if ",item-005," not in line]
    api.manifest.write_text("".join(lines) + "tape-new.wav,item-new,oral-history,en\n")
    gone = Catalog(api.catalog).latest_ok().set_index("item_id").loc["item-005", "restored_path"]
    assert Path(gone).is_file()

    report = _nightly(api, prune_missing=True)
    actions = {e["item_id"]: e["action"] for e in report["items"]}
    assert actions == {
        **{f"item-{i:03d}": "unchanged" for i in range(5)},
        "item-003": "changed (checksum)",
        "item-new": "new",
        "item-005": "left the manifest; outputs removed, withdrawn from search",
    }
    assert report["counts"]["withdrawn"] == 1 and not Path(gone).exists()
    assert "item-005" not in set(Catalog(api.catalog).latest_ok()["item_id"])
    rows = Catalog(api.catalog).item_rows()
    tonight = rows[rows["run_id"].isin(report["batches"])]
    assert sorted(tonight[tonight["status"] == "ok"]["item_id"]) == ["item-003", "item-new"]
    assert (tonight["status"] != "failed").all()
    latest = Catalog(api.catalog).latest_ok().set_index("item_id")
    assert latest.loc["item-003", "run_id"] in report["batches"]
    assert latest.loc["item-000", "run_id"] in first_night["batches"]


def test_gpu_stage_group_runs_as_a_deployment_under_the_gpu_limit(api, first_night, tmp_path):
    """The routed path: transcription of a batch runs as one flow run of archive-gpu-stages/gpu."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from archivox.catalog.store import Catalog
    from archivox.flows.archive_run import run_archive
    from archivox.flows.scaleout import ScaleOut, gpu_limit_name

    summary = run_archive(
        api.manifest, api.archive, tmp_path / "out", tmp_path / "catalog", _run_options(),
        item_ids=["item-000", "item-004"], scaleout=ScaleOut(gpu_deployment="archive-gpu-stages/gpu", gpu_poll_s=1.0),
    )
    assert (summary["ok"], summary["failed"]) == (2, 0), summary
    segments = Catalog(tmp_path / "catalog").read("segments")
    assert set(segments["item_id"]) == {"item-000", "item-004"}
    first = Catalog(api.catalog).read("segments")
    # Compared as a whole, as in the Dask test: another process's threading
    # can flip words of one short synthetic item.
    ours, theirs = (" ".join(" ".join(t[t["item_id"] == i]["text"]) for i in ("item-000", "item-004")) for t in (segments, first))
    assert word_error_rate(ours, theirs) <= SAME_TRANSCRIPT_WER, (ours, theirs)
    with get_client(sync_client=True) as client:
        # limit and sort given: this server's FastAPI refuses the nulls the client sends otherwise (HTTP 422).
        gpu_runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["archive-gpu-stages"])), sort=FlowRunSort.ID_DESC, limit=20
        )
        limit = client.read_global_concurrency_limit_by_name(gpu_limit_name())
    assert len(gpu_runs) == 1 and gpu_runs[0].state.is_completed()
    assert gpu_runs[0].parameters["steps"] == ["transcribe"]
    assert limit.limit == 1 and limit.active_slots == 0
    assert _who_ran(api, str(gpu_runs[0].id))  # a worker ran it, not this process


def test_dask_path_gives_the_same_catalog(api, first_night, tmp_path):
    pytest.importorskip("prefect_dask")
    from archivox.catalog.store import Catalog
    from archivox.flows.dask_run import run_archive_dask

    summary = run_archive_dask(api.manifest, api.archive, tmp_path / "out", tmp_path / "catalog", _run_options(), n_workers=2)
    assert summary["failed"] == 0, summary
    dask_rows = Catalog(tmp_path / "catalog").latest_ok().set_index("item_id").sort_index()
    server_rows = Catalog(api.catalog).latest_ok().set_index("item_id").sort_index()
    assert list(dask_rows.index) == list(server_rows.index)
    assert list(dask_rows["sha256"]) == list(server_rows["sha256"])
    assert list(dask_rows["config_hash"]) == list(server_rows["config_hash"])
    for item in dask_rows.index:
        a, _ = sf.read(dask_rows.loc[item, "restored_path"], dtype="float32")
        b, _ = sf.read(server_rows.loc[item, "restored_path"], dtype="float32")
        assert a.shape == b.shape and float(np.max(np.abs(a - b))) < 1e-6, item  # 24-bit FLAC, same chain
    dask_text = Catalog(tmp_path / "catalog").read("segments").groupby("item_id")["text"].apply(" ".join)
    server_segments = Catalog(api.catalog).read("segments").merge(
        server_rows.reset_index()[["item_id", "run_id"]], on=["item_id", "run_id"]
    )
    server_text = server_segments.groupby("item_id")["text"].apply(" ".join)
    assert sorted(dask_text.index) == sorted(server_text.index) == sorted(dask_rows.index)
    # The same audio, but tiny.en's int8 decoding of borderline synthetic
    # speech can flip words with the process's threading (Dask workers set
    # OMP_NUM_THREADS=1), so one short item may differ a lot; all together
    # the transcripts must agree.
    items = list(dask_text.index)
    together = word_error_rate(" ".join(dask_text[i] for i in items), " ".join(server_text[i] for i in items))
    assert together <= 0.2, (dict(dask_text), dict(server_text))
