"""The ``archivox`` command line.

Prefect is imported only by the commands that run flows, after
``PREFECT_HOME`` is pointed at a folder of the run's (so an embedded run
keeps its SQLite database beside its outputs, not in the project).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from archivox.errors import ArchivoxError, ConfigError

# Markup is off because file names, errors and transcripts are user text:
# "[Music]" or a file called "[/x].wav" must print as written, not be parsed
# as styling (or crash the summary). Soft wrap keeps each message on one line
# so logs can be grepped and JSON stays valid when stdout is not a terminal.
console = Console(stderr=False, highlight=False, markup=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def _stage_params(pairs: list[str]) -> dict[str, dict]:
    """``["loudness.target_lufs=-23", ...]`` -> ``{"loudness": {"target_lufs": -23.0}}``."""
    params: dict[str, dict] = {}
    for pair in pairs:
        try:
            key, value = pair.split("=", 1)
            stage, name = key.split(".", 1)
        except ValueError:
            raise ArchivoxError(f"--set {pair!r}: write STAGE.PARAMETER=VALUE, e.g. loudness.target_lufs=-23") from None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        params.setdefault(stage, {})[name] = parsed
    return params


def _restore_options(args, residual: bool = False):
    """The restoration options that `run` and `restore` share."""
    from archivox.config import RestoreOptions

    return RestoreOptions(
        stages=args.stages.split(",") if args.stages else [],
        preset=args.preset,
        params=_stage_params(args.set or []),
        channel_policy=args.channel_policy,
        residual=residual,
        block_s=args.block_s,
        long_s=args.long_s,
    )


def _run_options(args):
    from archivox.config import RunOptions
    from archivox.tasks.transcribe import TranscribeOptions

    restore = _restore_options(args, residual=args.residual)
    asr: dict = {}
    if args.asr_views:
        asr["candidates"] = tuple(v.strip() for v in args.asr_views.split(",") if v.strip())
    if args.asr_speeds:
        try:
            asr["stretch_factors"] = tuple(float(f) for f in args.asr_speeds.split(",") if f.strip())
        except ValueError as exc:
            raise ConfigError(f"--asr-speeds {args.asr_speeds!r}: give numbers such as 1,1.05,0.95") from exc
    if args.asr_extra_decodes is not None:
        given = args.asr_extra_decodes.strip()
        asr["extra_decodes"] = () if given.lower() == "none" else tuple(d.strip() for d in given.split(",") if d.strip())
    if args.asr_combine:
        asr["combine"] = args.asr_combine
    if args.no_asr_fallback:
        asr["temperature_fallback"] = False
    transcribe = TranscribeOptions(model=args.model, language=args.language, **asr)
    return RunOptions(
        restore=restore,
        transcribe=transcribe,
        transcribe_enabled=not args.no_transcribe,
        keep_asr_views=not args.no_asr_views,
        device=args.device,
        max_workers=args.workers,
        retries=args.retries,
    )


def _prepare_prefect(prefect_home: Path, verbose: bool) -> None:
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    # Prefect's embedded server cannot create its SQLite file in a missing folder
    # and only reports a start-up time-out.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # Failed items are reported in the run's table and the catalog; Prefect's
    # own tracebacks for them are only wanted when asked for.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The embedded server takes a while to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def cmd_run(args) -> int:
    manifest = Path(args.manifest)
    root = Path(args.root) if args.root else manifest.resolve().parent
    out = Path(args.out)
    catalog = Path(args.catalog) if args.catalog else out / "catalog"
    # Checked before Prefect's folder is created under OUT, which would land in
    # the archive; outputs inside the archive would also be picked up by `scan`.
    if out.resolve() == root.resolve():
        raise ArchivoxError(f"--out {out} is the archive root; choose an output folder outside the archive")
    if out.resolve().is_relative_to(root.resolve()):
        raise ArchivoxError(f"--out {out} is inside the archive root {root}; choose an output folder outside the archive")
    options = _run_options(args)
    _prepare_prefect(out / ".prefect", args.verbose)
    from archivox.flows.archive_run import run_archive

    with console.status(f"archivox: restoring and transcribing the items of {manifest} ..."):
        if args.dask or args.dask_workers:
            from archivox.flows.dask_run import run_archive_dask

            summary = run_archive_dask(
                manifest, root, out, catalog, options, address=args.dask or None,
                n_workers=args.dask_workers or 2, gpu_resource=args.dask_gpu_resource, force=args.force,
            )
        else:
            from archivox.flows.scaleout import ScaleOut

            scaleout = ScaleOut(gpu_deployment=args.gpu_deployment) if args.gpu_deployment else None
            summary = run_archive(manifest, root, out, catalog, options, force=args.force, scaleout=scaleout)
    table = Table(title=f"run {summary['run_id']}")
    for column in ("item", "path", "status", "error"):
        table.add_column(column, overflow="fold")
    for item in summary["items"]:
        style = {"ok": "green", "failed": "red", "skipped": "dim"}[item["status"]]
        table.add_row(item["item_id"], item["path"], Text(item["status"], style=style), item["error"][:160])
    console.print(table)
    console.print(
        f"{summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped; "
        f"outputs in {out}, catalog in {catalog}"
    )
    return 1 if summary["failed"] else 0


def cmd_scan(args) -> int:
    from archivox.manifest import scan, write_manifest

    items = scan(Path(args.root), collection=args.collection or "")
    write_manifest(items, Path(args.output))
    console.print(f"{len(items)} media files with audio under {args.root} -> {args.output}")
    return 0


@contextlib.contextmanager
def _decoded(path: Path, channel_policy: str):
    """Yield the input decoded to a 48 kHz mono float WAV in a temporary folder (removed afterwards)."""
    from archivox.tasks.extract import decode_to_file

    with tempfile.TemporaryDirectory(prefix=".archivox-") as work:
        decoded = Path(work) / "input.wav"
        decode_to_file(path, decoded, channel_policy=channel_policy)
        yield decoded


@contextlib.contextmanager
def _extracted(path: Path, options, work_parent: Path):
    """Yield (the audio to restore as a 48 kHz mono float WAV in a temporary folder, source-rate repairs or None).

    As a run extracts it: a source recorded at another rate is declipped and
    declicked at that rate first (see ``pipeline.extract_audio``).
    """
    from archivox.tasks.extract import probe
    from archivox.tasks.pipeline import extract_audio

    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".archivox-", dir=work_parent) as work:
        decoded = Path(work) / "input.wav"
        media = probe(path)
        _, repairs = extract_audio(path, decoded, options, media.sample_rate_hz,
                                   long_item=media.duration_s > options.restore.long_s)
        yield (Path(repairs["path"]) if repairs else decoded), repairs


def cmd_restore(args) -> int:
    import soundfile

    from archivox.config import RunOptions
    from archivox.tasks.chain import build_chain
    from archivox.tasks.pipeline import plan_stages, read_audio, write_flac, write_wav
    from archivox.tasks.source_rate import merged_into_chain

    source, destination = Path(args.input), Path(args.output)
    if destination.resolve() == source.resolve():
        raise ArchivoxError("the output would overwrite the input; choose another -o path")
    restore = _restore_options(args)
    options = RunOptions(restore=restore, device=args.device, transcribe_enabled=False)
    with _extracted(source, options, destination.parent) as (to_restore, repairs):
        done = {row["stage"] for row in repairs["stages"]} if repairs else set()
        info = soundfile.info(str(to_restore))
        if restore.blocks().is_long(info.frames, info.samplerate) and destination.suffix.lower() != ".wav":
            records = _restore_long_file(to_restore, destination, options, done)
        else:
            audio, rate_hz = read_audio(to_restore)
            _, names, params = plan_stages(audio, rate_hz, options)
            chain = build_chain([n for n in names if n not in done], params, device=args.device)
            result = chain(audio, rate_hz)
            (write_wav if destination.suffix.lower() == ".wav" else write_flac)(destination, result.audio, rate_hz)
            records = result.records
    rows = [dataclasses.asdict(r) for r in records]
    if repairs:
        rows = merged_into_chain(repairs["stages"], rows, {})
    if args.json:
        print(json.dumps({"input": str(source), "output": str(destination), "stages": rows}, indent=2, default=str))
        return 0
    table = Table(title=f"{source} -> {destination}")
    for column in ("stage", "seconds", "device", "metrics"):
        table.add_column(column, overflow="fold")
    for row in rows:
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row["metrics"].items() if not isinstance(v, (list, dict))}
        table.add_row(row["stage"], f"{row['seconds']:.2f}", row["device"], json.dumps(shown, default=str)[:300])
    console.print(table)
    return 0


def _restore_long_file(decoded: Path, destination: Path, options, done: set[str]) -> list:
    """A long input, block by block from its decoded work file (see ``archivox.tasks.longform``).

    ``done``: stages already run at the source's rate.
    """
    from archivox.tasks.chain import build_chain
    from archivox.tasks.longform import diagnose_excerpts, run_chain_from_file
    from archivox.tasks.pipeline import stages_from_diagnosis

    names, params = stages_from_diagnosis(diagnose_excerpts(decoded), options)
    chain = build_chain([n for n in names if n not in done], params, device=options.device)
    return run_chain_from_file(chain, decoded, destination, decoded.parent, options=options.restore.blocks()).records


def cmd_transcribe(args) -> int:
    from archivox.tasks.exports import write_sidecars
    from archivox.tasks.transcribe import TranscribeOptions, transcribe_item

    source = Path(args.input)
    options = TranscribeOptions(model=args.model, language=args.language, device=args.device)
    # Any container ffmpeg reads (video included) goes through the same
    # hardened decoder as a run, then to faster-whisper as a WAV.
    with _decoded(source, args.channel_policy) as decoded:
        transcript = transcribe_item({"restored": decoded}, options, language=args.language)
    base = Path(args.output) if args.output else Path.cwd() / source.name
    written = write_sidecars(transcript, base)
    for segment in transcript.segments:
        flags = f"  [{', '.join(segment.flags)}]" if segment.flags else ""
        console.print(f"[{segment.start_s:7.2f} -> {segment.end_s:7.2f}] {segment.text.strip()}{flags}")
    console.print(f"language {transcript.language} ({transcript.language_probability:.2f}); files: "
                  + ", ".join(str(p) for p in written.values()))
    return 0


def cmd_search(args) -> int:
    from archivox.catalog.search import search
    from archivox.catalog.store import Catalog

    hits = search(Catalog(Path(args.catalog)), args.query, limit=args.limit,
                  collection=args.collection, language=args.language)
    if args.json:
        print(json.dumps([dataclasses.asdict(hit) for hit in hits], indent=2))
        return 0 if hits else 1
    if not hits:
        console.print(f"no transcript segment matches {args.query!r}")
        return 1
    table = Table(title=f"search: {args.query}")
    for column in ("item", "path", "time", "text", "score", "flags"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        at = hit.phrase_start_s if hit.phrase_start_s is not None else hit.start_s
        score = "phrase" if hit.score >= 2.0 else f"{hit.score:.2f}"
        table.add_row(hit.item_id, hit.path, _clock(at), hit.text, score, ", ".join(hit.flags))
    console.print(table)
    return 0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:d}:{minutes:02d}:{secs:05.2f}"


def cmd_status(args) -> int:
    from archivox.catalog.store import Catalog

    catalog = Catalog(Path(args.catalog))
    latest = catalog.latest_items()
    runs = catalog.read("runs").sort_values("started_at")
    if latest.empty:
        console.print(f"catalog {args.catalog} has no items yet")
        return 0
    counts = latest["status"].value_counts().to_dict()
    console.print(
        f"{len(latest)} items: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped in their latest run"
        + (f", {counts['withdrawn']} withdrawn (left the archive)" if counts.get("withdrawn") else "")
        + f"; {len(runs)} runs recorded"
    )
    failed = latest[latest["status"] == "failed"]
    if len(failed):
        table = Table(title="failed items")
        for column in ("item", "path", "error"):
            table.add_column(column, overflow="fold")
        for row in failed.itertuples():
            table.add_row(row.item_id, row.path, row.error)
        console.print(table)
    return 1 if len(failed) else 0


def cmd_prune(args) -> int:
    from archivox.catalog.store import Catalog
    from archivox.fsutil import output_lock
    from archivox.prune import find_prunable, guard_majority, prune

    out = Path(args.out)
    catalog = Catalog(Path(args.catalog) if args.catalog else out / "catalog")
    if not catalog.files("items"):
        raise ArchivoxError(f"no catalog at {catalog.root}; give --catalog if it is not OUT/catalog")
    plan = find_prunable(Path(args.manifest), out, catalog, stale_work_h=args.stale_work_hours)
    guard_majority(plan, args.allow_majority)
    for rel_path, files in sorted(plan.paths.items()):
        console.print(f"{rel_path}: {len(files)} output files")
    for folder in plan.stale_work:
        console.print(f"stale work folder {folder}")
    megabytes = plan.size_bytes() / 1e6
    summary = (f"{len(plan.paths)} item paths no longer in the manifest ({len(plan.files)} files), "
               f"{len(plan.withdrawn)} items to withdraw from search, {len(plan.stale_work)} stale work folders: "
               f"{megabytes:.1f} MB")
    if not args.delete:
        console.print(f"{summary}; nothing removed (add --delete to remove them)")
        return 0
    with output_lock(out, exclusive=True):
        removed = prune(plan, out, catalog)
    console.print(f"{summary}; removed {removed} files")
    return 0


def cmd_demo(args) -> int:
    from archivox.demo import build_example_archive

    archive = build_example_archive(Path(args.destination), seed=args.seed)
    console.print(f"example archive with {len(archive.items)} manifest rows in {archive.root}; manifest {archive.manifest}")
    console.print(f"(one row deliberately points outside the root, at {archive.outside_file})")
    return 0


def cmd_deploy(args) -> int:
    from archivox.flows.deploy import main as deploy_main

    return deploy_main(args.prefect_args)


def cmd_diagnose(args) -> int:
    import soundfile

    from archivox.config import RestoreOptions
    from archivox.tasks.chain import WORKING_RATE_HZ
    from archivox.tasks.diagnose import diagnose
    from archivox.tasks.extract import decode_to_file, probe
    from archivox.tasks.longform import diagnose_excerpts
    from archivox.tasks.pipeline import read_audio
    from archivox.tasks.source_rate import defect_rates_at_source_rate

    source = Path(args.input)
    with _decoded(source, args.channel_policy) as decoded:
        info = soundfile.info(str(decoded))
        if RestoreOptions().blocks().is_long(info.frames, info.samplerate):
            diagnosis = diagnose_excerpts(decoded)  # long: from excerpts, as a run does
        else:
            diagnosis = diagnose(*read_audio(decoded))
        source_rate_hz = probe(source).sample_rate_hz
        if source_rate_hz not in (0, WORKING_RATE_HZ):
            # Resampling to 48 kHz hides clipping and clicks; count them at the
            # source's own rate, where a run repairs them.
            diagnosis.source_rate_hz = source_rate_hz
            at_source_rate = decoded.with_name("source_rate.wav")
            decode_to_file(source, at_source_rate, channel_policy=args.channel_policy, rate_hz=None)
            for name, value in defect_rates_at_source_rate(at_source_rate).items():
                setattr(diagnosis, name, value)
    console.print(json.dumps(diagnosis.to_dict(), indent=2) if args.json else diagnosis.format())
    return 0


def _add_restore_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stages", help="comma-separated stages, in any order (run in chain order): "
                        "declip,dc,declick,dehum,denoise,eq,loudness (default: all, those the "
                        "auto preset finds a defect for)")
    parser.add_argument("--preset", default="auto", help="auto (from each item's diagnosis), speech, music-safe, gentle")
    parser.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE",
                        help="override one stage parameter, e.g. loudness.target_lufs=-23 (repeatable)")
    parser.add_argument("--channel-policy", default="speech", choices=["mix", "left", "right", "speech"],
                        help="how to reduce stereo: mix, left, right, or the channel with more speech energy")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--long-s", type=float, default=300.0,
                        help="inputs longer than this are restored block by block, in bounded memory (default 300)")
    parser.add_argument("--block-s", type=float, default=120.0, help="block length for long inputs (default 120)")


def build_parser() -> argparse.ArgumentParser:
    import archivox

    parser = argparse.ArgumentParser(
        prog="archivox",
        description="Restore old or noisy speech recordings, transcribe them, and keep what was done in searchable "
        "Parquet catalogs. Start with `archivox scan FOLDER -o manifest.csv`, then `archivox run manifest.csv --out OUT`; "
        "`archivox COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"archivox {archivox.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="restore and transcribe every item of a manifest (Prefect flow, no server needed)")
    run.add_argument("manifest", help="CSV, Parquet or JSON Lines with a 'path' column")
    run.add_argument("--root", help="archive root the manifest's paths are relative to (default: the manifest's folder)")
    run.add_argument("--out", required=True, help="output folder (mirrors the archive; never the archive itself)")
    run.add_argument("--catalog", help="catalog folder (default: OUT/catalog)")
    run.add_argument("--force", action="store_true", help="redo items even when nothing changed")
    run.add_argument("--model", default="tiny.en", help="whisper model name (tiny.en, base) or local CTranslate2 folder")
    run.add_argument("--language", help="language of every item (a manifest 'language' column overrides it)")
    run.add_argument("--no-transcribe", action="store_true", help="restore only")
    run.add_argument("--asr-views", metavar="VIEW,...",
                     help="views the transcript is decoded from (default denoised,mix,gtcrn; also pre_denoise, "
                          "restored, original); denoised,mix drops the GTCRN view: 10 decodes instead of 13")
    run.add_argument("--asr-speeds", metavar="FACTOR,...",
                     help="each view is also decoded resampled to these multiples of its length (default "
                          "1,1.05,0.95, and the extra decodes below); 1 alone takes a quarter of the "
                          "transcription time for a higher WER")
    run.add_argument("--asr-extra-decodes", metavar="VIEW@FACTOR,...",
                     help="further decodes of some views at other speeds (default denoised@1.1,denoised@0.9,"
                          "mix@1.1,mix@0.9; 'none' for none); made only when the views are decoded at more "
                          "than one speed")
    run.add_argument("--asr-combine", choices=("auto", "vote", "choose"),
                     help="vote: merge the decodes word by word; choose: keep the decode with the best evidence, "
                          "stretch by stretch; auto (default): vote when there is more than one speed")
    run.add_argument("--no-asr-fallback", action="store_true",
                     help="decode each window once, at temperature 0, without faster-whisper's re-decoding of "
                          "repetitive or unsure windows by sampling: 11-18 %% less transcription time on degraded "
                          "speech, the voted WER unchanged on revision 7's nine decodes (bench/results, session 20)")
    run.add_argument("--no-asr-views", action="store_true",
                     help="do not keep the 16 kHz audio transcription reads (OUT/.archivox-asr-views); "
                          "without it, a later change to transcription alone restores every item again")
    run.add_argument("--residual", action="store_true", help="also write what the chain removed, as ITEM.residual.flac")
    run.add_argument("--workers", type=int, default=2, help="items processed at once (default 2)")
    run.add_argument("--retries", type=int, default=2, help="retries of a step after a transient error")
    run.add_argument("--verbose", action="store_true", help="show Prefect's logs")
    run.add_argument("--gpu-deployment", metavar="FLOW/DEPLOYMENT",
                     help="send the GPU steps to this deployment on a GPU work pool, e.g. archive-gpu-stages/gpu "
                          "(needs a Prefect server: PREFECT_API_URL)")
    run.add_argument("--dask", metavar="ADDRESS", help="run the items on the Dask cluster at ADDRESS (pip install 'archivox[dask]')")
    run.add_argument("--dask-workers", type=int, metavar="N", help="run the items on a local Dask cluster of N processes")
    run.add_argument("--dask-gpu-resource", default="", metavar="NAME",
                     help="Dask resource that marks GPU workers (e.g. GPU); GPU steps are placed on them")
    _add_restore_options(run)
    run.set_defaults(handler=cmd_run)

    scan = sub.add_parser("scan", help="write a manifest of every file with audio under a folder")
    scan.add_argument("root")
    scan.add_argument("-o", "--output", required=True, help="manifest to write (.csv, .parquet or .jsonl)")
    scan.add_argument("--collection", help="collection name for every row")
    scan.set_defaults(handler=cmd_scan)

    restore = sub.add_parser("restore", help="restore one file")
    restore.add_argument("input")
    restore.add_argument("-o", "--output", required=True, help="output file (.flac 24-bit, or .wav float)")
    restore.add_argument("--json", action="store_true", help="print each stage's parameters and findings as JSON")
    _add_restore_options(restore)
    restore.set_defaults(handler=cmd_restore)

    transcribe = sub.add_parser("transcribe", help="transcribe one file and write .srt/.vtt/.txt/.json beside -o")
    transcribe.add_argument("input")
    transcribe.add_argument("-o", "--output", help="base path of the sidecar files (default: ./NAME)")
    transcribe.add_argument("--model", default="tiny.en")
    transcribe.add_argument("--language")
    transcribe.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    transcribe.add_argument("--channel-policy", default="speech", choices=["mix", "left", "right", "speech"])
    transcribe.set_defaults(handler=cmd_transcribe)

    search = sub.add_parser("search", help="search the transcripts of a catalog")
    search.add_argument("query")
    search.add_argument("--catalog", required=True)
    search.add_argument("--limit", type=int, default=20)
    search.add_argument("--collection", help="only items of this manifest collection")
    search.add_argument("--language", help="only segments in this language (code, e.g. en)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON (for scripts)")
    search.set_defaults(handler=cmd_search)

    status = sub.add_parser("status", help="what a catalog holds: items by status, failures, runs")
    status.add_argument("--catalog", required=True)
    status.set_defaults(handler=cmd_status)

    prune_cmd = sub.add_parser(
        "prune", help="list (or, with --delete, remove) the outputs of items that have left the manifest",
        description="Outputs are found from the catalog's records; originals are never touched. Withdrawn items "
                    "leave search but keep their catalog history. Refused while a run is writing to OUT.",
    )
    prune_cmd.add_argument("manifest", help="the manifest of the whole archive as it is now")
    prune_cmd.add_argument("--out", required=True, help="the output folder of the runs")
    prune_cmd.add_argument("--catalog", help="catalog folder (default: OUT/catalog)")
    prune_cmd.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    prune_cmd.add_argument("--allow-majority", action="store_true",
                           help="allow removing the outputs of most recorded items (refused by default: "
                                "usually a partial manifest given by mistake)")
    prune_cmd.add_argument("--stale-work-hours", type=float, default=24.0,
                           help="work folders of runs that have written nothing for this long are removed too (default 24)")
    prune_cmd.set_defaults(handler=cmd_prune)

    demo = sub.add_parser("demo", help="build a small example archive (synthesized speech, planted defects, broken files)")
    demo.add_argument("destination", help="an empty or new folder; one file is also written beside it")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=cmd_demo)

    deploy = sub.add_parser(
        "deploy", help="create the work pools and deployments of deploy/prefect.yaml on the Prefect server",
        description="Arguments after 'deploy' go to 'prefect deploy' (default: --prefect-file deploy/prefect.yaml --all). "
                    "See deploy/README.md for the environment variables it reads.",
    )
    deploy.add_argument("prefect_args", nargs=argparse.REMAINDER)
    deploy.set_defaults(handler=cmd_deploy)

    diagnose = sub.add_parser("diagnose", help="measure a file's defects: DC, hum, clicks, clipping, noise, bandwidth")
    diagnose.add_argument("input")
    diagnose.add_argument("--json", action="store_true")
    diagnose.add_argument("--channel-policy", default="speech", choices=["mix", "left", "right", "speech"])
    diagnose.set_defaults(handler=cmd_diagnose)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ArchivoxError as exc:
        errors.print(f"archivox: {exc}", style="red")
        return 2


if __name__ == "__main__":
    sys.exit(main())
