"""`nox -s gpu` (reports/gpu.py): it refuses to run without a GPU, measuring nothing, and on the
CPU with `--device cpu` every step runs end to end on a tiny real Llama and a real eval set."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_train import make_tiny

REPO = Path(__file__).resolve().parent.parent


def gpu_job(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reports.gpu", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the job would run")
def test_without_a_gpu_the_job_says_so_and_measures_nothing(tmp_path):
    out = tmp_path / "gpu-results"
    proc = gpu_job("--out", str(out))
    assert proc.returncode == 2
    assert "no CUDA GPU here" in proc.stderr and "nothing was measured" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_bad_options_are_one_line_errors(tmp_path):
    proc = gpu_job("--wide-batch", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cpu_plumbing_check_runs_every_step(tmp_path_factory, default_model_dir, shared_eval_dir, tmp_path):
    """About 9 minutes on 2 cores: the quick CPU profile, pricing the random drafts for top_k auto, 24 cells."""
    tiny = make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)
    out = tmp_path / "gpu-results"
    proc = gpu_job("--device", "cpu", "--dtype", "float32", "--target", str(tiny), "--untrained",
                   "--datasets", "natural_questions", "--small-batches", "1", "--small-prompts", "2",
                   "--wide-batch", "2", "--max-new-tokens", "4", "--data-dir", str(shared_eval_dir),
                   "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout[proc.stdout.index("nox -s gpu summary"):]
    assert "CPU PLUMBING CHECK, NOT A GPU VALIDATION" in summary
    assert "HBM read (SM read kernel)" in summary and "no datasheet entry" in summary
    cells = pd.concat([pd.read_parquet(out / part / "results.parquet") for part in ("sweep-small", "sweep-wide")])
    assert set(cells["batch_size"]) == {1, 2} and (cells["status"] == "ok").all()
    spec = cells[cells["method"] != "ar"]
    assert set(spec["method"]) == {"lookup", "eagle2", "eagle3", "scylla"} and spec["lossless"].all()
    assert f"lossless (float32, T=0): {len(spec)} of {len(spec)} speculative cells" in summary
    assert (out / "report.html").stat().st_size > 10_000
