"""The Parquet tables of a recording: their Arrow schemas, in one place (DESIGN §4).

Every table lives under ``<root>/<table>/run=<id>/`` (hive-partitioned by run), so the ``run``
column is not stored in the files; DuckDB adds it from the path.
"""

from __future__ import annotations

import pyarrow as pa

#: the exact per-block sums that make every SNR-family metric of any per-block level choice exact
STAT_COLUMNS = (
    "n", "sum_ref", "sum_est", "sum_mix", "e_ref", "e_est", "e_mix",
    "dot_est_ref", "dot_mix_ref", "dot_est_mix",
)

BLOCKS = pa.schema(
    [
        ("utt_id", pa.string()),
        ("block", pa.int32()),
        ("level", pa.int16()),  # 0..L-1 static levels, cheapest first; L = the model's dynamic output
        ("source", pa.int16()),  # after the utterance's permutation is applied
        ("start", pa.int64()),  # first sample of the block
        ("n", pa.int64()),
    ]
    + [(c, pa.float64()) for c in STAT_COLUMNS[1:]]
    + [
        ("alpha", pa.float64()),  # inverse-gamma shape of sigma^2 (null without a variance head)
        ("beta", pa.float64()),  # inverse-gamma scale
        ("macs", pa.float64()),  # MACs spent on this block at this level (realised for dynamic)
        ("router_logit", pa.float64()),  # router score of this level on this block (null if none)
        ("sigma2", pa.float64()),  # Gaussian error variance per sample of this block (null if none)
    ]
)
#: a model's own per-block exit scores are extra float64 columns of the blocks table, one per score
SCORE_PREFIX = "score_"

#: per-utterance metric columns, each also present for the unprocessed mixture as ``mix_<name>``
UTTERANCE_METRICS = ("si_snr", "snr", "sdr", "pesq", "stoi", "estoi")

UTTERANCES = pa.schema(
    [
        ("utt_id", pa.string()),
        ("level", pa.int16()),
        ("level_name", pa.string()),
        ("source", pa.int16()),
        ("si_snr", pa.float64()),
        ("si_snri", pa.float64()),
        ("snr", pa.float64()),
        ("snri", pa.float64()),
        ("sdr", pa.float64()),
        ("sdri", pa.float64()),
        ("pesq", pa.float64()),
        ("stoi", pa.float64()),
        ("estoi", pa.float64()),
        ("mix_si_snr", pa.float64()),
        ("mix_snr", pa.float64()),
        ("mix_sdr", pa.float64()),
        ("mix_pesq", pa.float64()),
        ("mix_stoi", pa.float64()),
        ("mix_estoi", pa.float64()),
        ("input_snr", pa.float64()),  # SNR of this source in the mixture, dB
        ("duration", pa.float64()),  # seconds
        ("num_samples", pa.int64()),
        ("macs", pa.float64()),  # MACs spent on the utterance at this level
        ("permutation", pa.string()),  # JSON list: estimate index matched to each reference source
        ("metric_notes", pa.string()),  # why a metric is NaN (e.g. PESQ on silence), else null
        ("metadata", pa.string()),  # JSON object of the test set's per-utterance metadata
        # the estimate is constant (silent): every metric of this row is NaN by one rule, never clamped
        # (null in recordings made before the rule)
        ("silent_estimate", pa.bool_()),
    ]
)

LEVELS = pa.schema(
    [
        ("level", pa.int16()),
        ("name", pa.string()),
        ("kind", pa.string()),  # 'static' or 'dynamic'
        ("macs_per_sample", pa.float64()),  # cumulative; for dynamic: realised mean over the run
        ("gmacs", pa.float64()),  # GMAC per second of audio
        ("params", pa.int64()),
    ]
)

ERRORS = pa.schema(
    [
        ("utt_id", pa.string()),
        ("stage", pa.string()),  # load | validate | model | metrics | worker
        ("reason", pa.string()),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("status", pa.string()),  # running | complete | failed
        ("model", pa.string()),  # what the user asked for
        ("model_args", pa.string()),  # --model-arg key=value pairs as JSON (null for none)
        ("architecture", pa.string()),
        ("checkpoint_path", pa.string()),
        ("checkpoint_sha256", pa.string()),
        ("step", pa.int64()),
        ("dataset", pa.string()),
        ("dataset_path", pa.string()),
        ("dataset_fingerprint", pa.string()),
        ("sample_rate", pa.int64()),
        ("num_sources", pa.int64()),
        ("block_size", pa.int64()),
        ("num_levels", pa.int64()),
        ("num_utterances", pa.int64()),
        ("num_errors", pa.int64()),
        ("settings", pa.string()),  # JSON
        ("spec", pa.string()),  # JSON of the whole run spec
        ("model_metadata", pa.string()),  # JSON (checkpoint metadata: step, data, validation...)
        ("harness_version", pa.string()),
        ("schema_version", pa.int64()),
        ("git_commit", pa.string()),
        ("host", pa.string()),
        ("execution", pa.string()),  # JSON: executor, device, GPU name, torch and CUDA versions
        ("started_at", pa.string()),  # ISO 8601, UTC
        ("finished_at", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "blocks": BLOCKS,
    "utterances": UTTERANCES,
    "levels": LEVELS,
    "errors": ERRORS,
    "runs": RUNS,
}
#: tables written per shard (the rest are written once per run)
SHARD_TABLES = ("blocks", "utterances", "errors")
