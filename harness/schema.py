"""The results schema: one Parquet row per cell, versioned, documented in docs/results-schema.md.

Every column is declared here once, with its Arrow type, so the per-cell files, the
consolidated `results.parquet` and the documentation cannot drift apart (a test checks
that docs/results-schema.md names every column). Types are kept to what pandas, pyarrow,
Polars and DuckDB all read without options: int64, float64, bool, string, list<double>,
list<int32>, timestamp[us, UTC]; no unsigned, dictionary or nested-struct columns.
"""

import pyarrow as pa

# Bump on any change of a column's name, type or meaning; readers check it.
SCHEMA_VERSION = 9  # 2: draft_hash; 3: matmul; 4: lossless_near_ties, AR runner-ups; 5: compiled; 6: draft_input;
# 7: paired_ar_tokens_per_s, draft_dtype; 8: prompts_truncated; 9: lookup_tokens

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_PRUNED = "pruned"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_PRUNED)

_TS = pa.timestamp("us", tz="UTC")

RESULT_FIELDS: list[pa.Field] = [
    # identity
    pa.field("schema_version", pa.int64(), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    # target, method, draft
    pa.field("target", pa.string()),
    pa.field("target_fingerprint", pa.string()),
    pa.field("method", pa.string()),
    pa.field("draft", pa.string()),
    pa.field("draft_method", pa.string()),
    pa.field("draft_layers", pa.int64()),
    pa.field("draft_hash", pa.string()),
    pa.field("pretrain_tokens", pa.int64()),
    pa.field("draft_input", pa.string()),  # a trained draft's input path: projection or concat (DraftConfig)
    pa.field("draft_dtype", pa.string()),  # a trained draft's precision as it decoded (drafts/base.py decode_dtype)
    # workload
    pa.field("dataset", pa.string()),
    pa.field("dataset_source", pa.string()),
    pa.field("dataset_checksum", pa.string()),
    pa.field("n_prompts", pa.int64()),
    pa.field("turns", pa.string()),
    pa.field("n_requests", pa.int64()),
    pa.field("prompts_truncated", pa.int64()),  # --long-prompts truncate: (prompt, turn)s cut to fit; null: refuse
    pa.field("chat_template_hash", pa.string()),
    pa.field("system_prompt", pa.string()),
    # decode settings
    pa.field("batch_size", pa.int64()),
    pa.field("top_k", pa.int64()),
    pa.field("top_k_setting", pa.string()),
    pa.field("depth", pa.int64()),
    pa.field("total_tokens", pa.int64()),  # the draft's tree; a grafted lookup chain adds up to lookup_tokens
    pa.field("lookup_tokens", pa.int64()),  # --lookup-tokens: prompt-lookup chain grafted under each tree; 0: none
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("max_new_tokens", pa.int64()),
    pa.field("seed", pa.int64()),
    # environment
    pa.field("dtype", pa.string()),
    pa.field("matmul", pa.string()),  # "skinny" (scylla_impl/skinny_linear.py) or "torch"
    pa.field("compiled", pa.bool_()),  # --compile: steps through torch.compile (scylla_impl/compiled.py)
    pa.field("device", pa.string()),
    pa.field("device_name", pa.string()),
    pa.field("threads", pa.int64()),
    pa.field("profile_id", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("package_versions", pa.string()),
    # raw counters
    pa.field("emitted_tokens", pa.int64()),
    pa.field("verify_steps", pa.int64()),
    pa.field("batch_steps", pa.int64()),
    pa.field("drafted_nodes", pa.int64()),
    pa.field("accepted_tokens", pa.int64()),
    # derived acceptance
    pa.field("tau", pa.float64()),
    pa.field("tau_request_mean", pa.float64()),
    pa.field("accept_cond", pa.list_(pa.float64())),
    pa.field("accept_uncond", pa.list_(pa.float64())),
    # throughput and timing
    pa.field("tokens_per_s", pa.float64()),
    pa.field("ar_cell_id", pa.string()),
    pa.field("ar_tokens_per_s", pa.float64()),
    pa.field("paired_ar_tokens_per_s", pa.float64()),  # --paired-ar: AR on this cell's own batches, alongside
    pa.field("speedup_vs_ar", pa.float64()),
    pa.field("step_time_median_s", pa.float64()),
    pa.field("step_time_p90_s", pa.float64()),
    pa.field("draft_time_median_s", pa.float64()),
    pa.field("tree_time_median_s", pa.float64()),
    pa.field("verify_time_median_s", pa.float64()),
    pa.field("accept_time_median_s", pa.float64()),
    pa.field("commit_time_median_s", pa.float64()),
    pa.field("prefill_s", pa.float64()),
    pa.field("decode_s", pa.float64()),
    # device counters
    pa.field("peak_memory_bytes", pa.int64()),
    pa.field("peak_memory_kind", pa.string()),
    pa.field("sm_clock_mhz_median", pa.float64()),
    pa.field("power_w_median", pa.float64()),
    pa.field("gpu_util_median", pa.float64()),
    # correctness
    pa.field("lossless", pa.bool_()),
    pa.field("lossless_mismatches", pa.int64()),
    pa.field("lossless_near_ties", pa.int64()),
    # bookkeeping
    pa.field("started_at", _TS),
    pa.field("duration_s", pa.float64()),
]

RESULT_SCHEMA = pa.schema(RESULT_FIELDS, metadata={b"scylla.schema_version": str(SCHEMA_VERSION).encode()})
RESULT_COLUMNS = [f.name for f in RESULT_FIELDS]

# Optional per-step table (`--step-table`): one row per verify step and batch row.
STEP_FIELDS: list[pa.Field] = [
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("turn", pa.int64()),
    pa.field("batch", pa.int64()),
    pa.field("step", pa.int64()),
    pa.field("row", pa.int64()),
    pa.field("active", pa.bool_()),
    pa.field("drafted", pa.int64()),
    pa.field("accepted", pa.int64()),
    pa.field("emitted", pa.int64()),
    pa.field("step_s", pa.float64()),
]
STEP_SCHEMA = pa.schema(STEP_FIELDS, metadata={b"scylla.schema_version": str(SCHEMA_VERSION).encode()})

# Per-cell generated tokens, kept so the lossless check can compare a speculative cell
# with its AR partner even when the partner ran in an earlier (killed) invocation.
OUTPUT_FIELDS: list[pa.Field] = [
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string()),
    pa.field("turn", pa.int64()),
    pa.field("batch", pa.int64()),
    pa.field("row", pa.int64()),
    pa.field("token_ids", pa.list_(pa.int32())),
    # AR cells at T=0 only (null elsewhere): per token, its rivals, the tokens whose logit was
    # within rounding of it (scylla_impl/decode.py), so a divergence at a near-tie is told
    # from a real one (harness/metrics.py).
    pa.field("rivals", pa.list_(pa.list_(pa.int32()))),
]
OUTPUT_SCHEMA = pa.schema(OUTPUT_FIELDS)


def empty_row() -> dict:
    """A row with every column present and null, schema_version set."""
    row = dict.fromkeys(RESULT_COLUMNS)
    row["schema_version"] = SCHEMA_VERSION
    return row


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts, missing keys null) -> a table with exactly RESULT_SCHEMA."""
    unknown = {k for r in rows for k in r} - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"columns not in the results schema: {sorted(unknown)}")
    cols = {name: [r.get(name) for r in rows] for name in RESULT_COLUMNS}
    return pa.Table.from_pydict(cols, schema=RESULT_SCHEMA)
