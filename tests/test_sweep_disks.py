"""Sweeps on real full and read-only filesystems (tmpfs mounts; `chmod` does not stop root):
one line, nothing torn or left behind, and a resume after freeing space finishes the job."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def sweep(out: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = ["sweep", "--target", "default", "--datasets", "alpaca,gsm8k", "--batch-sizes", "1", "--prompts", "1",
            "--max-new-tokens", "2", "--warmup", "0", "--dtype", "float32", "--threads", "1",
            "--methods", "ar,scylla", "--draft", "scylla=random:scylla", "--top-k", "2,3", "--depths", "2",
            "--total-tokens", "3", "--temperatures", "0", "--data-dir", str(data_dir), "--out", str(out), *extra]
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def test_full_disk_ends_in_one_line_and_resume_finishes(full_disk, shared_eval_dir, default_model_dir):
    out = full_disk / "out"
    res = sweep(out, shared_eval_dir)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "No space left on device" in last and "--resume" in last
    assert "Traceback" not in res.stderr
    assert leftovers(out) == []
    kept = [p for p in (out / "cells").glob("*.parquet") if p.name.count(".") == 1]
    for p in kept:  # every cell file that exists is whole
        assert pq.read_table(p).num_rows == 1

    subprocess.run(["mount", "-o", "remount,size=4m", str(full_disk)], check=True)  # the user frees space
    res = sweep(out, shared_eval_dir, "--resume")
    assert res.returncode == 0, res.stderr
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert f"{len(kept)} kept from before" in res.stdout


def test_read_only_out_is_refused_before_any_work(read_only_disk, shared_eval_dir):
    for out in (read_only_disk / "new", read_only_disk / "existing"):
        res = sweep(out, shared_eval_dir)
        assert res.returncode == 1
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and "not writable" in res.stderr
    assert not (read_only_disk / "new").exists()
