"""Shared fixtures. Real things only: the embedded default model, the shared eval files."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# ../shared beside the checkout (the developers' machines and CI lay it there).
SHARED_EVAL = REPO.parent / "shared" / "data" / "eagle-eval"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores: keep torch from oversubscribing them, and make timings comparable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cpu_kernels():
    """The compiled CPU decode kernels (scylla_impl/skinny_linear.py), which must build where the
    tests run: a test of one of them uses this."""
    from scylla_impl import skinny_linear

    assert skinny_linear.kernel() is not None, "the kernels must build where the tests run"


@pytest.fixture(scope="session")
def bench_cells():
    """The report fixture's sweep results (tests/fixtures/report_results), with the weights each
    draft was measured with (the fixture predates the column): what the bench's check reads."""
    import pandas as pd

    cells = pd.read_parquet(REPO / "tests" / "fixtures" / "report_results" / "results.parquet")
    cells["draft_hash"] = cells["method"].map(lambda m: None if m == "ar" else f"{m}-weights-0")
    return cells


@pytest.fixture(scope="session")
def shared_eval_dir() -> Path:
    if not SHARED_EVAL.is_dir():
        pytest.skip(f"shared eval data not found at {SHARED_EVAL}")
    return SHARED_EVAL


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default target, fetched and converted once per SCYLLA_HOME."""
    from scylla_impl.embedded import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def target_fp32(default_model_dir):
    """The embedded default target in float32: the exactness path."""
    from scylla_impl.target import Target

    return Target.load("default", dtype="float32")


@pytest.fixture(scope="session")
def mt_bench_prompts(shared_eval_dir, target_fp32) -> list[list[int]]:
    """Token ids of the first turns of the MT-bench questions, through the chat template."""
    from workloads import load_dataset
    from workloads.chat import prompt_token_ids

    prompts = load_dataset("mt_bench", data_dir=shared_eval_dir)
    return [prompt_token_ids(target_fp32.tokenizer, p) for p in prompts]


# ---------------------------------------------------------------- real full and read-only disks


def _mount_tmpfs(where: Path, options: str) -> None:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'}); needs root")


def _unmount(where: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A real 64 KiB filesystem (tmpfs): writes past a few blocks fail with ENOSPC.
    `chmod` cannot simulate this, and does not stop root."""
    where = tmp_path / "full"
    _mount_tmpfs(where, "size=64k,mode=0777")
    yield where
    _unmount(where)


@pytest.fixture
def read_only_disk(tmp_path) -> Path:
    """A real read-only filesystem (tmpfs mounted ro): every write fails with EROFS, even as root.
    Holds one subfolder `existing/` so tests can point at a folder that exists."""
    where = tmp_path / "ro"
    _mount_tmpfs(where, "size=1m,mode=0777")
    (where / "existing").mkdir()
    import subprocess

    res = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        _unmount(where)
        pytest.skip(f"cannot remount read-only: {res.stderr.strip()}")
    yield where
    _unmount(where)
