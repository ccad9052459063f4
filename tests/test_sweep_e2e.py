"""End-to-end sweeps on the embedded default target: the CLI, Parquet readers, resume after
SIGKILL, failure isolation and the lossless check. Tiny on purpose: few prompts, few tokens."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.runner import CellWorker, run_sweep
from harness.schema import RESULT_COLUMNS, RESULT_SCHEMA, SCHEMA_VERSION
from harness.spec import build_spec

REPO = Path(__file__).resolve().parent.parent


def scylla(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def tiny_flags(data_dir: Path, **over: str) -> list[str]:
    flags = {
        "--target": "default", "--methods": "ar,scylla", "--draft": "scylla=random:scylla",
        "--datasets": "alpaca,natural_questions", "--batch-sizes": "1,2", "--top-k": "2,4", "--depths": "2",
        "--total-tokens": "4", "--temperatures": "0", "--prompts": "2", "--max-new-tokens": "4",
        "--warmup": "0", "--dtype": "float32", "--threads": "1", "--data-dir": str(data_dir),
    }
    flags.update(over)
    return [x for kv in flags.items() for x in kv]


def test_cli_sweep_end_to_end_schema_and_readers(shared_eval_dir, default_model_dir, tmp_path):
    out = tmp_path / "out"
    res = scylla("sweep", *tiny_flags(shared_eval_dir), "--step-table", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    # Not a terminal: a line per finished cell, no bars.
    assert "Loading weights" not in res.stderr and "\r" not in res.stderr
    assert "[sweep] 12/12 cells" in res.stderr and "ETA" in res.stderr
    assert "12 ok, 0 failed, 0 pruned" in res.stdout
    assert "speedup" in res.stdout.splitlines()[0]

    path = out / "results.parquet"
    t = pq.read_table(path)
    assert t.schema.equals(RESULT_SCHEMA, check_metadata=False)
    assert t.schema.metadata[b"scylla.schema_version"] == str(SCHEMA_VERSION).encode()
    rows = t.to_pylist()
    assert len(rows) == 2 * 2 * (1 + 2)  # datasets x batches x (AR + draft x 2 top_k)
    assert len({r["cell_id"] for r in rows}) == len(rows)
    assert {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert r["emitted_tokens"] > 0 and r["verify_steps"] > 0 and r["tokens_per_s"] > 0
        assert r["n_prompts"] == 2 and r["dataset_source"] == "eagle-dir" and len(r["dataset_checksum"]) == 64
        assert r["target"] == "SmolLM2-135M-Instruct" and r["target_fingerprint"]
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["threads"] >= 1
        assert json.loads(r["package_versions"])["torch"].startswith("2.")
        assert r["git_commit"] and r["chat_template_hash"]
        assert r["speedup_vs_ar"] is not None and r["ar_tokens_per_s"] is not None
        if r["method"] == "ar":
            assert r["tau"] == 1.0 and r["top_k"] is None and r["lossless"] is None and r["speedup_vs_ar"] == 1.0
        else:
            assert r["tau"] >= 1.0 and r["top_k"] in (2, 4) and r["top_k_setting"] in ("2", "4")
            assert len(r["accept_cond"]) == len(r["accept_uncond"]) == 2
            assert r["lossless"] is True, r  # float32, greedy: token for token the AR output
            assert r["draft_method"] == "scylla" and r["draft_layers"] >= 1

    import duckdb
    import pandas as pd
    import polars as pl

    df = pd.read_parquet(path)
    assert list(df.columns) == RESULT_COLUMNS and len(df) == 12
    pl_df = pl.read_parquet(path)
    assert pl_df.columns == RESULT_COLUMNS and pl_df.height == 12
    assert pl_df["accept_cond"].dtype == pl.List(pl.Float64)
    con = duckdb.connect()
    n, methods = con.execute(f"SELECT count(*), count(DISTINCT method) FROM '{path}'").fetchone()
    assert (n, methods) == (12, 2)
    (mean_tau,) = con.execute(f"SELECT avg(tau) FROM '{path}' WHERE method = 'ar'").fetchone()
    assert mean_tau == 1.0
    cols = [d[0] for d in con.execute(f"DESCRIBE SELECT * FROM '{path}'").fetchall()]
    assert cols == RESULT_COLUMNS

    steps = pq.read_table(out / "steps.parquet").to_pandas()
    assert set(steps.cell_id) == set(df.cell_id)
    # the per-step table adds up to the row counters
    act = steps[steps.active]
    assert act.groupby("cell_id").emitted.sum().to_dict() == dict(zip(df.cell_id, df.emitted_tokens))

    # the same command again refuses to touch finished results; --resume runs nothing new
    again = scylla("sweep", *tiny_flags(shared_eval_dir), "--out", str(out))
    assert again.returncode == 1 and "pass --resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    resumed = scylla("sweep", *tiny_flags(shared_eval_dir), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "0 run now, 12 kept from before" in resumed.stdout
    assert pq.read_table(path).num_rows == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--datasets", "mmlu"], "unknown dataset 'mmlu'"),
        (["--methods", "ar,eagle3"], "method 'eagle3' has no draft checkpoint"),
        (["--batch-sizes", "-1"], "batch_sizes: -1 is not a positive integer"),
        (["--top-k", "auto"], "needs a device profile"),
        ([], "no results folder: pass --out"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    res = scylla("sweep", "--datasets", "gsm8k", *args)
    assert res.returncode == 1
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_cli_bad_device_fails_before_writing(tmp_path):
    out = tmp_path / "o"
    res = scylla("sweep", "--datasets", "gsm8k", "--device", "cuda:7", "--out", str(out))
    assert res.returncode == 1 and "device cuda:7:" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list(out.rglob("*.parquet"))


def test_cli_target_that_cannot_load_ends_the_sweep_in_one_line(shared_eval_dir, tmp_path):
    out = tmp_path / "o"
    res = scylla("sweep", "--target", str(tmp_path / "no-model"), "--datasets", "natural_questions", "--prompts", "1",
                 "--data-dir", str(shared_eval_dir), "--out", str(out))
    assert res.returncode == 1 and "cannot load target" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists(), "a target folder that is not there is refused before anything is written"


def test_cli_unknown_yaml_key(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("datasets: [gsm8k]\nbatch_size: 4\n")
    res = scylla("sweep", str(spec), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and "unknown key 'batch_size' (did you mean 'batch_sizes'?)" in res.stderr
    assert not (tmp_path / "o").exists()


def test_cli_yaml_that_is_not_utf8(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_bytes("datasets: [gsm8k]\nsystem_prompt: caf\u00e9\n".encode("latin-1"))
    res = scylla("sweep", str(spec), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and "not UTF-8 text" in res.stderr and "save it as UTF-8" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _row_files(cells: Path) -> list[Path]:
    return [p for p in cells.glob("*.parquet") if p.name.count(".") == 1] if cells.is_dir() else []


def _start_and_kill(args: list[str], cells: Path, after: int, sig: int) -> subprocess.Popen:
    """Start a sweep, wait until `after` cells are done, send `sig` while it is mid-sweep."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(_row_files(cells)) < after:
            time.sleep(0.05)
        assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, sig)
    finally:
        proc.wait(120)
    return proc


def test_resume_after_sigkill_loses_and_duplicates_nothing(shared_eval_dir, default_model_dir, tmp_path):
    out = tmp_path / "out"
    cells = out / "cells"
    flags = tiny_flags(shared_eval_dir, **{"--datasets": "natural_questions", "--batch-sizes": "1", "--top-k": "1,2,3,4",
                                           "--depths": "2,3", "--total-tokens": "3"}) + ["--out", str(out)]
    total = 1 + 4 * 2
    proc = _start_and_kill(flags, cells, after=2, sig=signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = {p.stem: pq.read_table(p).to_pylist()[0] for p in _row_files(cells)}
    assert 2 <= len(before) < total - 1

    # a resumed sweep stopped by SIGTERM unwinds: exit 143, the consolidated file holds every finished cell
    proc = _start_and_kill([*flags, "--resume"], cells, after=len(before) + 1, sig=signal.SIGTERM)
    err = proc.stderr.read().decode()
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert "terminated: writing the finished cells" in err and "--resume" in err
    finished = {p.stem for p in _row_files(cells)}
    assert set(pq.read_table(out / "results.parquet").column("cell_id").to_pylist()) == finished
    assert len(finished) < total

    res = scylla("sweep", *flags, "--resume")
    assert res.returncode == 0, res.stderr
    assert f"{total - len(finished)} run now, {len(finished)} kept from before" in res.stdout
    rows = pq.read_table(out / "results.parquet").to_pylist()
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == len(set(ids)) == total
    assert {r["status"] for r in rows} == {"ok"}
    by_id = {r["cell_id"]: r for r in rows}
    for cid, old in before.items():  # finished cells kept as they were, not re-measured
        assert by_id[cid]["run_id"] == old["run_id"] and by_id[cid]["started_at"] == old["started_at"]
    assert len({r["run_id"] for r in rows}) == 3
    assert not list(out.rglob("*.tmp"))
    assert len(list((out / "runs").glob("*.json"))) == 3


class PlantedWorker(CellWorker):
    """The real worker with faults planted in the engine's output, by cell."""

    def _generate(self, target, prompts, draft, config):
        result = super()._generate(target, prompts, draft, config)
        if draft is not None and config.top_k == 2 and not getattr(self, "planted", False):
            result.token_ids[0][-1] += 1  # one wrong token in one request
            self.planted = True
        if draft is not None and config.top_k == 3:
            raise RuntimeError("planted failure")
        if draft is not None and config.top_k == 4:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return result


def test_failing_cells_recorded_and_lossless_catches_planted_mismatch(shared_eval_dir, default_model_dir, tmp_path):
    spec = build_spec(None, {"methods": "ar,scylla", "draft": ("scylla=random:scylla",), "datasets": "natural_questions",
                             "batch_sizes": "1", "threads": "1", "top_k": "1,2,3,4", "depths": "2", "total_tokens": "3",
                             "prompts": "2", "max_new_tokens": "4", "warmup": "0", "dtype": "float32",
                             "data_dir": str(shared_eval_dir)})
    report = run_sweep(spec, tmp_path / "out", worker_factory=PlantedWorker)
    rows = {(r["method"], r["top_k"]): r for r in pq.read_table(report.results_path).to_pylist()}
    assert len(rows) == 5
    assert rows[("ar", None)]["status"] == "ok"
    assert rows[("scylla", 1)]["status"] == "ok" and rows[("scylla", 1)]["lossless"] is True
    planted = rows[("scylla", 2)]
    assert planted["status"] == "ok" and planted["lossless"] is False and planted["lossless_mismatches"] == 1
    failed = rows[("scylla", 3)]
    assert failed["status"] == "failed" and failed["error"].startswith("RuntimeError: planted failure (at ")
    assert failed["tau"] is None and failed["duration_s"] is not None
    oom = rows[("scylla", 4)]
    assert oom["status"] == "failed" and "out of memory" in oom["error"].lower()

    # resume skips failed cells unless asked; --retry-failed runs them again
    again = run_sweep(spec, tmp_path / "out", resume=True, worker_factory=PlantedWorker)
    assert again.ran == 0 and again.skipped == 5
    retried = run_sweep(spec, tmp_path / "out", resume=True, retry_failed=True, worker_factory=CellWorker)
    assert retried.ran == 2
    rows = {(r["method"], r["top_k"]): r for r in pq.read_table(retried.results_path).to_pylist()}
    assert rows[("scylla", 3)]["status"] == rows[("scylla", 4)]["status"] == "ok"
    assert rows[("scylla", 3)]["lossless"] is True and rows[("scylla", 3)]["error"] is None
    assert pa.Table.from_pylist(list(rows.values())).num_rows == 5


def test_mt_bench_second_turn_follows_the_first_answer(shared_eval_dir, default_model_dir, tmp_path):
    spec = build_spec(None, {"methods": "ar", "datasets": "mt_bench", "prompts": "1", "max_new_tokens": "3",
                             "warmup": "0", "threads": "1", "data_dir": str(shared_eval_dir)})
    report = run_sweep(spec, tmp_path / "out")
    (row,) = pq.read_table(report.results_path).to_pylist()
    assert row["status"] == "ok" and row["n_requests"] == 2 and row["turns"] == "all"
    outputs = pq.read_table(tmp_path / "out" / "cells" / f"{row['cell_id']}.outputs.parquet").to_pylist()
    assert [(o["turn"], o["batch"]) for o in outputs] == [(0, 0), (1, 1)]
    assert all(len(o["token_ids"]) == 3 for o in outputs)


class RecordingWorker(CellWorker):
    """Notes, per call of the engine, whether it decoded with a draft."""

    calls: list[bool] = []

    def _generate(self, target, prompts, draft, config):
        RecordingWorker.calls.append(draft is not None)
        return super()._generate(target, prompts, draft, config)


def test_paired_ar_decodes_each_batch_alongside_and_divides_by_it(shared_eval_dir, default_model_dir, tmp_path):
    flags = {"methods": "ar,scylla", "draft": ("scylla=random:scylla",), "datasets": "natural_questions",
             "batch_sizes": "1", "threads": "1", "top_k": "2", "depths": "2", "total_tokens": "3",
             "prompts": "3", "max_new_tokens": "4", "warmup": "2", "dtype": "float32", "data_dir": str(shared_eval_dir)}
    spec = build_spec(None, {**flags, "paired_ar": "true"})
    RecordingWorker.calls = []
    report = run_sweep(spec, tmp_path / "out", worker_factory=RecordingWorker)
    # AR cell: warm-up and 3 batches, alone. Speculative cell: warm-up with both, then AR
    # before batch 0, after batch 1, before batch 2.
    assert RecordingWorker.calls == [False] * 4 + [True, False] + [False, True, True, False, False, True]
    rows = {r["method"]: r for r in pq.read_table(report.results_path).to_pylist()}
    ar, sc = rows["ar"], rows["scylla"]
    assert ar["paired_ar_tokens_per_s"] is None and ar["speedup_vs_ar"] == 1.0
    assert sc["paired_ar_tokens_per_s"] > 0 and sc["ar_tokens_per_s"] == sc["paired_ar_tokens_per_s"]
    assert sc["speedup_vs_ar"] == pytest.approx(sc["tokens_per_s"] / sc["paired_ar_tokens_per_s"])
    assert sc["ar_cell_id"] == ar["cell_id"] and sc["lossless"] is True

    # Without the flag the divisor is the AR cell's own throughput.
    plain = run_sweep(build_spec(None, flags), tmp_path / "plain")
    rows = {r["method"]: r for r in pq.read_table(plain.results_path).to_pylist()}
    assert rows["scylla"]["paired_ar_tokens_per_s"] is None
    assert rows["scylla"]["ar_tokens_per_s"] == rows["ar"]["tokens_per_s"]


def test_cli_says_why_cells_were_pruned_and_fails_when_none_ran(shared_eval_dir, default_model_dir, tmp_path):
    # Two prompts fill a batch of 2 but not of 3: the b3 cells are pruned, with their reason.
    some = scylla("sweep", *tiny_flags(shared_eval_dir, **{"--batch-sizes": "1,3", "--top-k": "2",
                                                          "--datasets": "alpaca"}), "--out", str(tmp_path / "some"))
    assert some.returncode == 0, some.stderr
    assert "2 ok, 0 failed, 2 pruned" in some.stdout
    assert "pruned 2 cells: batch_size 3 is larger than prompts (2): no full batch to run" in some.stdout
    none = scylla("sweep", *tiny_flags(shared_eval_dir, **{"--batch-sizes": "3", "--top-k": "2",
                                                          "--datasets": "alpaca"}), "--out", str(tmp_path / "none"))
    assert none.returncode == 1 and len(none.stderr.strip().splitlines()) == 1, none.stderr
    assert none.stderr.startswith("error: nothing ran: every cell was pruned (batch_size 3 is larger than prompts (2)")
    assert pq.read_table(tmp_path / "none" / "results.parquet").column("status").to_pylist() == ["pruned"] * 2


def test_a_checkpoint_of_another_method_fails_its_cells_under_a_registry_name(shared_eval_dir, target_fp32, tmp_path):
    """A report's EAGLE-2 is an EAGLE-2 draft: a Scylla checkpoint given as --draft eagle2=PATH
    fails those cells saying so, and runs under a name of the user's own."""
    from scylla_impl.drafts import new_draft

    folder = tmp_path / "scylla-draft"
    new_draft("scylla", target_fp32, layers=1).save(folder)
    spec = build_spec(None, {"methods": "ar,eagle2,mine", "draft": (f"eagle2={folder}", f"mine={folder}"),
                             "datasets": "gsm8k", "batch_sizes": "1", "top_k": "2", "depths": "2",
                             "total_tokens": "3", "prompts": "1", "max_new_tokens": "3", "warmup": "0",
                             "dtype": "float32", "threads": "1", "data_dir": str(shared_eval_dir)})
    report = run_sweep(spec, tmp_path / "out")
    rows = {r["method"]: r for r in pq.read_table(report.results_path).to_pylist()}
    assert rows["eagle2"]["status"] == "failed"
    assert rows["eagle2"]["error"].startswith(f"ScyllaError: draft for eagle2: {folder} is a draft of Scylla, not of "
                                              f"EAGLE-2: run it as method scylla, or under a name of your own "
                                              f"(--methods ar,mine --draft mine={folder})")
    assert rows["mine"]["status"] == "ok" and rows["mine"]["draft_method"] == "scylla"
