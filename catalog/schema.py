"""Explicit schemas of the catalog's datasets.

The dataset names and columns are a public contract: users' scripts read
them with pandas, pyarrow or DuckDB. Add columns at the end; never rename or
retype one. Free-form structures (stage parameters, metrics, item metadata)
are JSON text so that every reader sees the same thing.
"""

from __future__ import annotations

import pyarrow as pa

ITEMS = pa.schema(
    [
        ("run_id", pa.string()),
        ("item_id", pa.string()),
        ("path", pa.string()),
        ("collection", pa.string()),
        ("language", pa.string()),
        ("sha256", pa.string()),
        ("size_bytes", pa.int64()),
        ("duration_s", pa.float64()),
        ("status", pa.string()),  # ok | failed | skipped | withdrawn (left the archive; archivox prune)
        ("error", pa.string()),
        ("error_kind", pa.string()),  # bad_input | fixity | transient | ""
        ("restored_path", pa.string()),
        ("transcript_path", pa.string()),
        ("residual_path", pa.string()),
        ("config_hash", pa.string()),
        ("models_key", pa.string()),
        ("media", pa.string()),  # JSON: container, codec, rate, channels, streams
        ("diagnosis", pa.string()),  # JSON
        ("language_detected", pa.string()),
        ("language_probability", pa.float64()),
        ("asr_candidate", pa.string()),
        ("metadata", pa.string()),  # JSON: the manifest's other columns
        ("worker", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("seconds", pa.float64()),
        ("asr_evidence", pa.string()),  # JSON: every transcription candidate's scores and the choice
        ("model_sha256", pa.string()),  # of the whisper model that made the transcript
        ("restore_key", pa.string()),  # restoration settings, revision and denoiser: same key, same restored audio
        ("restored_in_run", pa.string()),  # the run that made the restored audio (an earlier one when only transcription ran)
    ]
)

STAGES = pa.schema(
    [
        ("run_id", pa.string()),
        ("item_id", pa.string()),
        ("position", pa.int32()),
        ("stage", pa.string()),
        ("params", pa.string()),  # JSON
        ("metrics", pa.string()),  # JSON
        ("seconds", pa.float64()),
        ("device", pa.string()),
    ]
)

SEGMENTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("item_id", pa.string()),
        ("segment_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("text", pa.string()),
        ("avg_logprob", pa.float64()),
        ("no_speech_prob", pa.float64()),
        ("compression_ratio", pa.float64()),
        ("language", pa.string()),
        ("flags", pa.list_(pa.string())),
        ("candidate", pa.string()),
    ]
)

WORDS = pa.schema(
    [
        ("run_id", pa.string()),
        ("item_id", pa.string()),
        ("segment_index", pa.int32()),
        ("word_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("word", pa.string()),
        ("probability", pa.float64()),
        # Share of the decodes that voted for the word; null where none was taken.
        ("agreement", pa.float64()),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("archivox_version", pa.string()),
        ("git_revision", pa.string()),
        ("config_hash", pa.string()),
        ("config", pa.string()),  # JSON
        ("models", pa.string()),  # JSON: name -> {path, sha256}
        ("manifest", pa.string()),
        ("items_total", pa.int64()),
        ("items_ok", pa.int64()),
        ("items_failed", pa.int64()),
        ("items_skipped", pa.int64()),
        ("host", pa.string()),
    ]
)

DATASETS: dict[str, pa.Schema] = {
    "items": ITEMS,
    "stages": STAGES,
    "segments": SEGMENTS,
    "words": WORDS,
    "runs": RUNS,
}
