"""Scale-out: where the GPU steps of an archive run execute, and the GPU stage-group flow.

An archive run has CPU steps (probe, extract, DSP restoration, record) and
steps that want a GPU: restoration when the chain holds the neural denoiser,
and transcription. By default everything runs in the run's own process.
With :class:`ScaleOut` the same step functions of
:mod:`archivox.tasks.pipeline` run elsewhere, without any change to them:

- ``gpu_deployment`` set: each batch hands its GPU work to one flow run of
  the ``archive-gpu-stages`` deployment (a worker of the GPU pool) through
  ``run_deployment``. Only paths travel: the GPU flow reads the work files
  the CPU side wrote and writes its outcome as JSON beside them, so the work
  folder (``OUT/.archivox-work``), the outputs and the catalog must be on
  storage both machines mount at the same path.
- ``dask_gpu_resource`` set: with a Dask task runner, the GPU steps are
  annotated with that Dask resource so the scheduler places them on the
  workers started with ``--resources GPU=1``.

On the GPU worker, every item holds one slot of a global concurrency limit
named after the worker's host (created on the server when missing), so two
flow runs landing on one GPU machine never load it twice at once, and models
stay loaded for the life of the flow-run process (``models/whisper.py`` and
``models/denoisers.py`` cache them).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from archivox.config import RunOptions
from archivox.errors import ConfigError
from archivox.fsutil import atomic_path
from archivox.tasks import pipeline

GPU_FLOW_NAME = "archive-gpu-stages"
GPU_RESULT_FILE = "gpu-result.json"
GPU_SLOTS_ENV = "ARCHIVOX_GPU_SLOTS"  # slots of the per-worker limit; 1 = one item on the GPU at a time
GPU_LIMIT_ENV = "ARCHIVOX_GPU_LIMIT"  # overrides the limit's name (e.g. one per GPU of a multi-GPU host)


@dataclass
class ScaleOut:
    """Where an archive run's GPU steps run (all empty: in this process).

    ``gpu_deployment``: "flow/deployment" name of the GPU stage group, e.g.
    ``"archive-gpu-stages/gpu"``. ``gpu_timeout_s``: how long a batch waits
    for its GPU flow run (queueing included) before its items are recorded
    as failed (transient, so the next run retries them).
    ``dask_gpu_resource``: Dask resource name for the GPU steps, e.g. "GPU".
    """

    gpu_deployment: str = ""
    gpu_timeout_s: float = 6 * 3600.0
    gpu_poll_s: float = 2.0
    dask_gpu_resource: str = ""

    def __post_init__(self) -> None:
        if self.gpu_deployment and self.gpu_deployment.count("/") != 1:
            raise ConfigError(
                f"gpu_deployment={self.gpu_deployment!r}; write FLOW/DEPLOYMENT, e.g. '{GPU_FLOW_NAME}/gpu'"
            )
        if not 1.0 <= self.gpu_timeout_s <= 7 * 86400.0:
            raise ConfigError(f"gpu_timeout_s={self.gpu_timeout_s} is outside [1, 604800] s")
        if not 0.1 <= self.gpu_poll_s <= 60.0:
            raise ConfigError(f"gpu_poll_s={self.gpu_poll_s} is outside [0.1, 60] s")

    @property
    def routed(self) -> bool:
        return bool(self.gpu_deployment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ScaleOut":
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown scale-out option(s) {sorted(unknown)}; valid ones are {sorted(names)}")
        return cls(**data)


def gpu_steps(options: RunOptions) -> list[str]:
    """The steps of a run that want a GPU, in order ("restore" only when the chain holds the denoiser)."""
    steps = []
    if "denoise" in options.restore.resolved_stages():
        steps.append("restore")
    if options.transcribe_enabled:
        steps.append("transcribe")
    return steps


def dask_placement(scale: ScaleOut, step: str, options: RunOptions):
    """Context manager that places a GPU step on Dask workers holding ``scale.dask_gpu_resource``.

    A no-op for CPU steps and when no resource is configured; annotating with
    a resource no worker has would leave the task waiting forever, so this is
    only ever on when asked for.
    """
    if not scale.dask_gpu_resource or step not in gpu_steps(options):
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={scale.dask_gpu_resource: 1})


def split_batches(item_ids: list[str], batch_size: int) -> list[list[str]]:
    """Consecutive batches of at most ``batch_size`` ids (manifest order kept)."""
    if not 1 <= batch_size <= 100_000:
        raise ConfigError(f"batch_size={batch_size} is outside [1, 100000] items")
    return [item_ids[i : i + batch_size] for i in range(0, len(item_ids), batch_size)]


# -- the GPU worker's side ---------------------------------------------------


def gpu_limit_name() -> str:
    return os.environ.get(GPU_LIMIT_ENV) or f"archivox-gpu-{socket.gethostname()}"


def ensure_gpu_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` on the server when it is missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # another flow run created it meanwhile
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


def run_gpu_steps(state: dict[str, Any], steps: list[str], options: RunOptions) -> dict[str, Any]:
    """Run the GPU ``steps`` of one item from its CPU-side ``state`` (paths and small dicts).

    ``state`` is what ``probe_extract_task`` (or ``restore_task`` when restoration
    stayed on the CPU) returned. Returns the state the record step expects.
    """
    plan = pipeline.ItemPlan.from_dict(state["plan"])
    if "restore" in steps and state.get("extracted"):
        state = {**state, "restored": pipeline.restore(plan, state["extracted"], options)}
    if "transcribe" in steps:
        transcript_path = ""
        if state.get("restored") and options.transcribe_enabled:
            transcript_path = pipeline.transcribe(plan, state["restored"]["sources"], options)
        state = {**state, "transcript_path": transcript_path}
    return state


def result_path(state: dict[str, Any]) -> Path:
    return Path(state["plan"]["work_dir"]) / GPU_RESULT_FILE


def write_result(state: dict[str, Any], outcome: dict[str, Any] | None, error: str = "", error_kind: str = "") -> Path:
    destination = result_path(state)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as temporary:
        Path(temporary).write_text(json.dumps({"outcome": outcome, "error": error, "error_kind": error_kind}))
    return destination


def read_result(state: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return json.loads(result_path(state).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@flow(name=GPU_FLOW_NAME, log_prints=True)
def archive_gpu_stages(items: list[dict[str, Any]], options: dict[str, Any], steps: list[str]) -> list[str]:
    """The GPU stage group: run ``steps`` for each item state of a batch, one item at a time.

    ``items``: states from the CPU side (paths and small dicts, never audio).
    Each item's outcome (or error) is written to ``WORK_DIR/gpu-result.json``;
    returns those paths. An item's failure is recorded in its result and the
    others go on, so one bad file never fails the batch.
    """
    logger = get_run_logger()
    run_options = RunOptions.from_dict(options)
    name = gpu_limit_name()
    slots = int(os.environ.get(GPU_SLOTS_ENV, "1"))
    ensure_gpu_limit(name, slots)
    from prefect.concurrency.sync import concurrency

    written = []
    for state in items:
        started = time.perf_counter()
        try:
            with concurrency(name, occupy=1, strict=True):
                outcome = run_gpu_steps(state, steps, run_options)
            written.append(str(write_result(state, outcome)))
        except Exception as exc:  # noqa: BLE001 - the item's error is recorded, the batch goes on
            message, kind = pipeline.describe_error(exc)
            written.append(str(write_result(state, None, message, kind)))
        logger.info("%s: %s in %.1f s", state["plan"]["item_id"], "+".join(steps), time.perf_counter() - started)
    return written


# -- the CPU side: hand a batch's GPU work to the GPU pool --------------------


def dispatch_gpu_batch(
    states: list[dict[str, Any]], options: RunOptions, scale: ScaleOut
) -> list[tuple[dict[str, Any] | None, str, str]]:
    """Run the GPU steps of ``states`` as one flow run of ``scale.gpu_deployment``.

    Returns, per state in order, (outcome, error, error_kind). Waits at most
    ``scale.gpu_timeout_s``; a batch that did not finish by then is cancelled
    and its items are reported as transient failures.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    if not states:
        return []
    steps = gpu_steps(options)
    for state in states:  # a result left by an earlier attempt must not be taken for this one
        with contextlib.suppress(FileNotFoundError):
            result_path(state).unlink()
    run = run_deployment(
        scale.gpu_deployment,
        parameters={"items": states, "options": options.to_dict(), "steps": steps},
        timeout=scale.gpu_timeout_s,
        poll_interval=scale.gpu_poll_s,
    )
    final = run.state
    if final is None or not final.is_final():
        with get_client(sync_client=True) as client, contextlib.suppress(Exception):
            client.set_flow_run_state(run.id, Cancelled(message="archivox: GPU batch timed out"), force=True)
        why = f"the GPU batch (flow run {run.id}) did not finish within {scale.gpu_timeout_s:.0f} s"
    else:
        why = f"the GPU batch (flow run {run.id}) ended {final.name}: {final.message or ''}".strip()
    results = []
    for state in states:
        found = read_result(state)
        if found is None:
            results.append((None, why, "transient"))
        else:
            results.append((found["outcome"], found["error"], found["error_kind"]))
    return results
