from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Prefect must never write into the project or the user's home from tests;
# set before anything imports prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="archivox-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
# At exit, after the harness's server has stopped writing to it; otherwise
# every test session leaves a folder behind in the temp dir.
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from signals import corpus_dir  # noqa: E402


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_dir()
    if path is None:
        pytest.skip("the shared corpus (../shared/corpus or $ARCHIVOX_CORPUS) is not present in this checkout")
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for the whole session, as Prefect recommends."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_archive(tmp_path_factory):
    """The example archive of `archivox demo`, built once per session (read-only for tests)."""
    from archivox.demo import build_example_archive

    return build_example_archive(tmp_path_factory.mktemp("demo") / "archive", seed=0)
