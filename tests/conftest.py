from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from signals import corpus_dir  # noqa: E402


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_dir()
    if path is None:
        pytest.skip("the shared corpus (../shared/corpus or $ARCHIVOX_CORPUS) is not present in this checkout")
    return path
