"""The worker images' build steps, checked without a Docker engine (CI has none).

Each Dockerfile copies a chosen set of folders and installs archivox from
them. A package folder added to pyproject but not copied would only show up
as an ImportError on a worker at night; here the same build context is laid
out and built into a wheel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "deploy" / "Dockerfile.cpu", REPO / "deploy" / "Dockerfile.cuda"]


def _copied(dockerfile: Path) -> list[str]:
    """The sources of the Dockerfile's COPY lines, relative to the repository root."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"\s*COPY\s+(?!--from)(.+)\s+\S+\s*$", line)
        if match:
            sources += match.group(1).split()
    return sources


def _package_folders() -> set[str]:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(setuptools["package-dir"].values())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_copies_every_package_folder(dockerfile: Path) -> None:
    copied = _copied(dockerfile)
    assert all((REPO / source).exists() for source in copied), copied
    missing = _package_folders() - set(copied)
    assert not missing, f"{dockerfile.name} does not COPY {sorted(missing)}, which pyproject installs"
    assert "pyproject.toml" in copied


def test_the_image_build_context_installs_archivox(tmp_path: Path) -> None:
    """What `COPY ...; touch README.md; pip install .` does, as a wheel built from only the copied paths."""
    context = tmp_path / "context"
    context.mkdir()
    for source in _copied(DOCKERFILES[0]):
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, context / source)
    (context / "README.md").touch()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("archivox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # archivox.flows.deploy is what compose's deploy service runs.
    for module in ("archivox/cli.py", "archivox/flows/archive_run.py", "archivox/flows/deploy.py",
                   "archivox/tasks/pipeline.py", "archivox/models/dfn3.py", "archivox/catalog/store.py"):
        assert module in names, module
    # The command line that a worker's shell, and the README, use.
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert re.search(r"^archivox\s*=", zipfile.ZipFile(wheel).read(entry_points).decode(), re.MULTILINE)
