"""Outputs of items that have left the archive, and work folders that stopped runs left behind.

A nightly run only adds: when a file leaves the manifest (deleted, moved,
renamed), its restored FLAC, transcript sidecars, residual and kept ASR views
stay under OUT, and search still finds its transcript. ``find_prunable``
lists them from the catalog, which knows every path a run has written for;
``prune`` removes the files and records each withdrawn item in the catalog
(an ``items`` row with status ``withdrawn``), so that search stops returning
it while the catalog keeps its history.

Only names that archivox itself derives from a recorded item path are ever
touched, and only inside OUT; the originals are never touched.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archivox.catalog.store import Catalog, utc_now
from archivox.errors import ArchivoxError, ManifestError
from archivox.fsutil import resolve_inside
from archivox.manifest import read_manifest

# What a run writes for an item whose relative path is P (see
# archivox.tasks.pipeline.output_paths, keep_asr_views and exports.FORMATS).
_OUTPUT_SUFFIXES = (".flac", ".srt", ".vtt", ".txt", ".json", ".qda.txt", ".residual.flac")
_VIEW_SUFFIXES = (".pre_denoise.flac", ".denoised.flac", ".views.json")
WITHDRAWN = "withdrawn"


@dataclass
class PrunePlan:
    """What ``prune`` would remove.

    ``paths``: item paths (relative, as in the manifest) whose outputs go,
    each with its files. ``withdrawn``: item ids no longer in the manifest at
    all, each with its newest ``items`` row (an id whose file only moved keeps its catalog entry). ``stale_work``:
    work folders of runs that have not written for ``stale_work_h`` hours.
    """

    paths: dict[str, list[Path]] = field(default_factory=dict)
    withdrawn: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale_work: list[Path] = field(default_factory=list)
    catalog_paths: int = 0  # item paths the catalog has an ok row for

    @property
    def files(self) -> list[Path]:
        return [f for files in self.paths.values() for f in files]

    def size_bytes(self) -> int:
        total = sum(f.stat().st_size for f in self.files if f.exists())
        for folder in self.stale_work:
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        return total


def output_names(out: Path, rel_path: str) -> list[Path]:
    """Every file a run may write under ``out`` for the item at ``rel_path``, whether or not it exists.

    Names only, no file system access: a nightly run asks this for every item.
    """
    from archivox.tasks.pipeline import ASR_VIEWS_FOLDER

    base = Path(os.path.normpath(Path(out) / rel_path))
    views = Path(os.path.normpath(Path(out) / ASR_VIEWS_FOLDER / rel_path))
    return [base.with_name(base.name + s) for s in _OUTPUT_SUFFIXES] + [
        views.with_name(views.name + s) for s in _VIEW_SUFFIXES
    ]


def item_outputs(out: Path, rel_path: str) -> list[Path]:
    """The files of ``output_names`` that exist now (never symlinks); [] for a path that leads outside ``out``."""
    try:
        resolve_inside(out, rel_path)
    except ManifestError:
        return []  # a row refused for leading outside the root wrote nothing
    return [f for f in output_names(out, rel_path) if f.is_file() and not f.is_symlink()]


def find_prunable(manifest: Path, out: Path, catalog: Catalog, *, stale_work_h: float = 24.0,
                  now_s: float | None = None) -> PrunePlan:
    """Outputs under ``out`` that belong to no row of ``manifest``, from what ``catalog`` recorded."""
    from archivox.tasks.pipeline import WORK_FOLDER

    out = Path(out).resolve()
    items = read_manifest(Path(manifest))
    # A row with a problem still names its file: a typo in one column must not
    # cost that item its outputs.
    keep_paths = {i.path for i in items}
    keep_ids = {i.item_id for i in items}
    rows = catalog.item_rows()
    plan = PrunePlan()
    plan.catalog_paths = rows.loc[rows["status"] == "ok", "path"].dropna().nunique()
    gone = [p for p in rows["path"].dropna().unique().tolist() if p not in keep_paths]
    # Output names are the item's path plus a suffix, so one item's output can
    # carry another's name ("a.wav" and "a.wav.residual"); what a kept item
    # may own is never listed.
    owned = {f for p in (keep_paths if gone else ()) for f in output_names(out, p)}
    for rel_path in gone:
        files = [f for f in item_outputs(out, rel_path) if f not in owned]
        if files:
            plan.paths[rel_path] = files
    latest = rows.drop_duplicates("item_id", keep="first")
    leaving = latest[(~latest["item_id"].isin(keep_ids)) & (latest["status"] != WITHDRAWN)]
    plan.withdrawn = {row["item_id"]: row for row in leaving.sort_values("item_id").to_dict(orient="records")}
    now_s = time.time() if now_s is None else now_s
    work = out / WORK_FOLDER
    if work.is_dir():
        for folder in sorted(p for p in work.iterdir() if p.is_dir()):
            # A run that is still going keeps writing into its folder; one that
            # was killed stops, and a normal end removes the folder itself.
            newest = max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.rglob("*")])
            if now_s - newest > stale_work_h * 3600.0:
                plan.stale_work.append(folder)
    return plan


def prune(plan: PrunePlan, out: Path, catalog: Catalog) -> int:
    """Remove what ``plan`` lists and record the withdrawn items; returns the number of files removed."""
    import shutil

    out = Path(out).resolve()
    removed = 0
    for path in plan.files:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        _remove_empty_parents(path.parent, out)
    for folder in plan.stale_work:
        removed += sum(1 for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder, ignore_errors=True)
    if plan.withdrawn:
        now = utc_now()
        run_id = f"prune-{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
        catalog.append("items", [
            {**row, "run_id": run_id, "status": WITHDRAWN, "error": "", "error_kind": "",
             "started_at": now, "finished_at": now, "seconds": 0.0}
            for row in plan.withdrawn.values()
        ])
    return removed


def _remove_empty_parents(folder: Path, out: Path) -> None:
    while folder != out and out in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty
        folder = folder.parent


def guard_majority(plan: PrunePlan, allow_majority: bool) -> None:
    """Refuse a prune that would take the outputs of most recorded items, unless asked for.

    The usual cause is a partial manifest (one collection, last night's new
    files) given where the whole archive's was meant.
    """
    if allow_majority or plan.catalog_paths == 0:
        return
    if len(plan.paths) * 2 > plan.catalog_paths:
        raise ArchivoxError(
            f"the manifest leaves out {len(plan.paths)} of the {plan.catalog_paths} item paths the catalog has "
            f"restored; if it really lists the whole archive, add --allow-majority"
        )
