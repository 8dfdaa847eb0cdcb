"""End-to-end throughput of an archive run, and how much of its wall time is spent outside the stages.

Builds a synthetic archive of ``--n`` speech items (espeak-ng over a little
hiss, ``--sentences`` different sentences each), runs the ``archive_run`` flow over it in
this process (Prefect's embedded server, a bounded thread pool) and reads
back where the time went:

- ``stages``: the restoration stages' own seconds (the catalog's ``stages`` rows),
- ``transcribe``: the transcribe tasks' run time (Prefect task runs),
- ``outside``: everything else in the flow run's wall time: probing, decoding
  with ffmpeg, the diagnosis, FLAC/WAV/Parquet writes, fixity hashing, the
  catalog, Prefect's task orchestration and artifacts.
- ``diagnosis``: the analysis that picks each item's stages (its seconds are
  kept in the catalog's ``items.diagnosis``). It is computation on the audio,
  like a stage, so it is counted apart from orchestration and I/O.

With ``--workers 1`` the tasks run one at a time, so the parts add up to the
wall time, and ``orchestration and I/O / wall`` (outside, less the diagnosis)
is the fraction the issue bounds (at most 5 %). With more workers, the busy
fraction is reported instead.

``--retranscribe`` then changes only a transcription setting and runs twice
more over the same outputs: once as archivox does it (from the kept ASR
views, no restoration), once with ``keep_asr_views`` off (everything
restored again, as before the views were kept), and adds their wall times
and the views' size on disk against the restored files'.

    python bench/throughput.py --n 50 --out bench/results/throughput-2026-11-21-$(hostname).md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _prefect_env(home: Path) -> None:
    os.environ["PREFECT_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "240")


def _task_seconds(flow_run_id: str) -> dict[str, float]:
    """Sum of run time per task name of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    totals: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            # limit and sort given explicitly: the pinned FastAPI refuses nulls there (HTTP 422).
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200, offset=offset,
            )
            for run in runs:
                name = run.name.rsplit("-", 1)[0]  # "restore-3f0" -> "restore"
                totals[name] = totals.get(name, 0.0) + run.total_run_time.total_seconds()
            if len(runs) < 200:
                return totals
            offset += 200


def _flow_wall_s(flow_run_id: str) -> float:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    return (run.end_time - run.start_time).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="items in the archive")
    parser.add_argument("--sentences", type=int, default=4,
                        help="different sentences per item (about 2.5-3.5 s each); one sentence repeated would trip "
                             "Whisper's compression-ratio fallback and time that instead")
    parser.add_argument("--workers", type=int, default=1, help="task threads of the run (RunOptions.max_workers)")
    parser.add_argument("--stages", default="", help="comma-separated stages; empty: every stage installed")
    parser.add_argument("--no-transcribe", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--work", default="", help="folder for the archive and outputs (default: a temporary one)")
    parser.add_argument("--out", default="", help="write the Markdown table here")
    parser.add_argument("--retranscribe", action="store_true",
                        help="also time a transcription-only change, with and without the kept ASR views")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="archivox-throughput-"))
    _prefect_env(work / "prefect-home")

    from signals import speech_archive

    from archivox.catalog.store import Catalog
    from archivox.config import RestoreOptions, RunOptions
    from archivox.flows.archive_run import run_archive

    started = time.perf_counter()
    manifest = speech_archive(work / "archive", args.n, seed=3, sentences=args.sentences)
    build_s = time.perf_counter() - started

    options = RunOptions(
        restore=RestoreOptions(stages=args.stages.split(",") if args.stages else []),
        transcribe_enabled=not args.no_transcribe,
        device=args.device,
        max_workers=args.workers,
        retries=0,
    )
    started = time.perf_counter()
    summary = run_archive(manifest, work / "archive", work / "out", work / "catalog", options)
    call_s = time.perf_counter() - started

    catalog = Catalog(work / "catalog")
    items = catalog.read("items")
    stages = catalog.read("stages")
    audio_s = float(items["duration_s"].sum())
    wall_s = _flow_wall_s(summary["run_id"])
    tasks = _task_seconds(summary["run_id"])
    stage_s = stages.groupby("stage")["seconds"].sum().to_dict()
    stages_total = float(sum(stage_s.values()))
    transcribe_s = tasks.get("transcribe", 0.0)
    inside = stages_total + transcribe_s
    outside = wall_s - inside if args.workers == 1 else wall_s * args.workers - inside
    restore_other = tasks.get("restore", 0.0) - stages_total
    diagnosis_s = float(sum(json.loads(d or "{}").get("seconds", 0.0) for d in items["diagnosis"]))
    overhead = outside - diagnosis_s  # what the issue bounds: orchestration and I/O
    orchestration = wall_s * args.workers - sum(tasks.values())

    lines = [
        f"# archivox throughput: {args.n}-item archive, {audio_s / 60:.1f} min of audio",
        "",
        (f"- machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
         f"load average {load_start:.1f} before the run "
         # Before the run starts, the load is other jobs' alone.
         f"({'other jobs were running: absolute speeds are pessimistic' if load_start >= 1.0 else 'otherwise idle'})"
         f" and {os.getloadavg()[0]:.1f} at the end"),
        (f"- stages: {', '.join(options.restore.resolved_stages())}; transcription: "
        f"{'off' if args.no_transcribe else options.transcribe.model}; device: {args.device}; task threads: {args.workers}"),
        f"- items: {summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped",
        f"- command: `python bench/throughput.py --n {args.n} --sentences {args.sentences} --workers {args.workers}"
        + (f" --stages {args.stages}" if args.stages else "") + (" --no-transcribe" if args.no_transcribe else "") + (" --retranscribe" if args.retranscribe else "") + "`",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| audio | {audio_s:.1f} s |",
        f"| flow-run wall time | {wall_s:.1f} s |",
        f"| x real time (audio / wall) | {audio_s / wall_s:.2f} |",
        f"| restoration stages | {stages_total:.1f} s |",
        f"| transcribe tasks | {transcribe_s:.1f} s |",
        f"| outside the stages (orchestration, I/O, diagnosis) | {outside:.1f} s |",
        f"| outside / {'wall' if args.workers == 1 else f'(wall x {args.workers} threads)'} | {100 * outside / (wall_s * args.workers):.1f} % |",
        f"| of which: diagnosis (the analysis that picks each item's stages) | {diagnosis_s:.1f} s |",
        f"| of which: restore task's reads, writes and resampling | {restore_other - diagnosis_s:.1f} s |",
        f"| of which: probe-extract + record tasks (ffprobe/ffmpeg, fixity, Parquet) | {tasks.get('probe-extract', 0.0) + tasks.get('record', 0.0):.1f} s |",
        f"| of which: orchestration (wall x threads - all task run times) | {orchestration:.1f} s ({100 * orchestration / (wall_s * args.workers):.1f} %) |",
        f"| **orchestration and I/O (outside the stages, less the diagnosis) / {'wall' if args.workers == 1 else f'(wall x {args.workers} threads)'}** | **{100 * overhead / (wall_s * args.workers):.1f} %** |",
        f"| run_archive call incl. embedded server start | {call_s:.1f} s |",
        f"| building the archive (not counted) | {build_s:.1f} s |",
        "",
        "| stage or task | seconds | share of wall |",
        "| --- | ---: | ---: |",
    ]
    for name, seconds in sorted(stage_s.items(), key=lambda kv: -kv[1]):
        lines.append(f"| stage {name} | {seconds:.1f} | {100 * seconds / (wall_s * args.workers):.1f} % |")
    for name, seconds in sorted(tasks.items(), key=lambda kv: -kv[1]):
        lines.append(f"| task {name} (whole task) | {seconds:.1f} | {100 * seconds / (wall_s * args.workers):.1f} % |")
    if args.retranscribe and not args.no_transcribe:
        lines += _retranscription(work, manifest, options)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0 if summary["failed"] == 0 else 1


def _retranscription(work: Path, manifest: Path, options) -> list[str]:
    """Rows for a transcription-only change, run after the first run over the same outputs."""
    from dataclasses import replace

    from archivox.flows.archive_run import run_archive
    from archivox.tasks.pipeline import ASR_VIEWS_FOLDER

    out = work / "out"
    first_ok = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac") if ASR_VIEWS_FOLDER not in p.parts}
    rows = []
    for label, changed in (
        ("kept ASR views (default)", replace(options, transcribe=replace(options.transcribe, choose_by="item"))),
        ("no kept views: restored again", replace(options, transcribe=replace(options.transcribe, choose_by="stretch", beam_size=4),
                                                 keep_asr_views=False)),
    ):
        summary = run_archive(manifest, work / "archive", out, work / "catalog", changed)
        wall_s = _flow_wall_s(summary["run_id"])
        rewritten = sum(1 for p, mtime in first_ok.items() if p.stat().st_mtime_ns != mtime)
        first_ok = {p: p.stat().st_mtime_ns for p in first_ok}
        tasks = _task_seconds(summary["run_id"])
        rows.append(f"| {label} | {summary['ok']} | {rewritten} | {tasks.get('restore', 0.0):.1f} s "
                    f"| {tasks.get('transcribe', 0.0):.1f} s | {wall_s:.1f} s |")
    views_bytes = sum(p.stat().st_size for p in (out / ASR_VIEWS_FOLDER).rglob("*.flac"))
    restored_bytes = sum(p.stat().st_size for p in first_ok)
    return [
        "",
        "## A change to transcription alone (`choose_by`, then `beam_size`)",
        "",
        "| rerun | items ok | restored files written again | restore tasks | transcribe tasks | flow-run wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        (f"Kept ASR views on disk: {views_bytes / 1e6:.1f} MB, against {restored_bytes / 1e6:.1f} MB of restored FLAC "
         f"({100 * views_bytes / max(restored_bytes, 1):.0f} %)."),
    ]


if __name__ == "__main__":
    sys.exit(main())
