"""The archive run on a Dask cluster, for teams that already have one (``pip install archivox[dask]``).

The same ``archive_run`` flow, with ``prefect-dask``'s task runner instead of
the thread pool: each item's steps become Dask tasks on the cluster's
workers, and only paths and small dicts travel (the workers must see the
archive, OUT and the catalog at the same paths). GPU steps (denoiser
restoration, transcription) can be pinned to the workers that hold a GPU:
start those with ``dask worker ... --resources GPU=1`` and pass
``gpu_resource="GPU"``; each such task then takes one unit of the resource,
so a GPU runs one item at a time and its models stay loaded in that worker
process between items.

Every Dask worker reports its task runs to the Prefect API, so set
``PREFECT_API_URL`` (a Prefect server) in the workers' environment; a local
cluster started here inherits this process's setting.
"""

from __future__ import annotations

import os
from typing import Any

from archivox.config import RunOptions
from archivox.errors import ConfigError
from archivox.flows.scaleout import ScaleOut


def dask_task_runner(address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1):
    """A ``DaskTaskRunner`` on the cluster at ``address``, or on a local cluster of ``n_workers`` processes."""
    try:
        import dask
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(f"the Dask path needs prefect-dask and distributed: pip install 'archivox[dask]' ({exc})") from exc
    if address:
        return DaskTaskRunner(address=address)
    if not 1 <= n_workers <= 256:
        raise ConfigError(f"n_workers={n_workers} is outside [1, 256]")
    if not 1 <= threads_per_worker <= 64:
        raise ConfigError(f"threads_per_worker={threads_per_worker} is outside [1, 64]")
    # A worker process that inherited an initialised CUDA context by fork would crash on first use.
    dask.config.set({"distributed.worker.multiprocessing-method": "spawn"})
    from prefect.settings import PREFECT_API_URL

    cluster_kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "dashboard_address": None,
    }
    api_url = PREFECT_API_URL.value()
    if api_url:
        # Spawned workers read their settings from the environment only; this
        # process may have its API from a settings context, not from it.
        cluster_kwargs["env"] = {"PREFECT_API_URL": str(api_url), "PREFECT_HOME": os.environ.get("PREFECT_HOME", "")}
        if not cluster_kwargs["env"]["PREFECT_HOME"]:
            del cluster_kwargs["env"]["PREFECT_HOME"]
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)


def run_archive_dask(
    manifest,
    root,
    out,
    catalog,
    options: RunOptions | None = None,
    *,
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    gpu_resource: str = "",
    force: bool = False,
    item_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Run the archive on Dask; the same catalog result as :func:`~archivox.flows.archive_run.run_archive`."""
    from archivox.flows.archive_run import run_archive

    return run_archive(
        manifest, root, out, catalog, options, force=force, item_ids=item_ids,
        scaleout=ScaleOut(dask_gpu_resource=gpu_resource) if gpu_resource else None,
        task_runner=dask_task_runner(address, n_workers, threads_per_worker),
    )
