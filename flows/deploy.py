"""Deploy archivox from ``deploy/prefect.yaml``: ``python -m archivox.flows.deploy [prefect deploy options]``.

A thin wrapper around ``prefect deploy`` that

- fills in the settings the YAML reads from the environment when they are
  not set (:data:`DEFAULTS`; the project folder defaults to the current one),
- creates the CPU and GPU work pools (type ``process``) when they do not exist,
- works around Prefect 3.8's ``prefect deploy`` failing with HTTP 422 on
  ``/work_pools/NAME/workers/filter`` after the first deployment when the
  server runs on FastAPI >= 0.139 (the CLI sends ``"limit": null``, which the
  server's ``int`` body field refuses), so ``--all`` deploys every entry.

Without options it runs ``prefect --no-prompt deploy --prefect-file deploy/prefect.yaml --all``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULTS = {
    "ARCHIVOX_TIMEZONE": "UTC",
    "ARCHIVOX_CPU_POOL": "archivox-cpu",
    "ARCHIVOX_GPU_POOL": "archivox-gpu",
}
REQUIRED = ("ARCHIVOX_MANIFEST", "ARCHIVOX_ROOT", "ARCHIVOX_OUT", "ARCHIVOX_CATALOG")


def ensure_pools(names: list[str], pool_type: str = "process") -> list[str]:
    """Create the work pools ``names`` that do not exist yet; returns the ones created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for name in dict.fromkeys(names):
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                try:
                    client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
                    created.append(name)
                except ObjectAlreadyExists:
                    pass
    return created


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("ARCHIVOX_PROJECT_DIR", str(Path.cwd().resolve()))
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(
            f"set {', '.join(missing)} before deploying (the nightly deployment's paths, as the workers see them); "
            "see deploy/README.md",
            file=sys.stderr,
        )
        return 2
    if not argv:
        argv = ["--prefect-file", "deploy/prefect.yaml", "--all"]
    ensure_pools([os.environ["ARCHIVOX_CPU_POOL"], os.environ["ARCHIVOX_GPU_POOL"]])
    from prefect.cli import app

    sys.argv = ["prefect", "--no-prompt", "deploy", *argv]  # Prefect's CLI entry point reads sys.argv
    try:
        app()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
