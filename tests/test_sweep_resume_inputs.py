"""A resume never mixes inputs: another dataset file, or a retrained draft, under the same
name is refused in one line, and what the folder holds stays as it was."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent


def scylla(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)


def sweep(out: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return scylla("sweep", "--target", "default", "--datasets", "alpaca", "--batch-sizes", "1", "--prompts", "1",
                  "--max-new-tokens", "2", "--warmup", "0", "--dtype", "float32", "--threads", "1",
                  "--top-k", "2", "--depths", "2", "--total-tokens", "3", "--temperatures", "0",
                  "--data-dir", str(data_dir), "--out", str(out), *extra)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@pytest.mark.slow  # about 20 s; the retrained-draft refusal checks the same inputs record in the fast suite
def test_resume_with_another_dataset_file_is_refused(shared_eval_dir, default_model_dir, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        shutil.copytree(shared_eval_dir / "alpaca", d / "alpaca")
    lines = (second / "alpaca" / "question.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["turns"] = ["A different question under the same name?"]
    (second / "alpaca" / "question.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")

    out = tmp_path / "out"
    res = sweep(out, first, "--methods", "ar")
    assert res.returncode == 0, res.stderr
    recorded = json.loads((out / "inputs.json").read_text())
    assert len(recorded["datasets"]["alpaca"]) == 64 and recorded["targets"]["default"]
    before = snapshot(out)

    res = sweep(out, second, "--methods", "ar", "--resume")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "dataset 'alpaca'" in res.stderr and "--data-dir" in res.stderr and "another --out" in res.stderr
    assert snapshot(out) == before  # refused before anything was written

    res = sweep(out, first, "--methods", "ar", "--resume")  # the same inputs resume as before
    assert res.returncode == 0, res.stderr
    assert pq.read_table(out / "results.parquet").num_rows == 1


def test_resume_with_a_retrained_draft_is_refused(shared_eval_dir, default_model_dir, target_fp32, tmp_path):
    from scylla_impl.drafts import new_draft

    folder = tmp_path / "draft"
    new_draft("eagle2", target_fp32, seed=0).save(folder)
    out = tmp_path / "out"
    flags = ("--methods", "ar,eagle2", "--draft", f"eagle2={folder}")
    res = sweep(out, shared_eval_dir, *flags)
    assert res.returncode == 0, res.stderr
    rows = pq.read_table(out / "results.parquet").to_pylist()
    spec_row = next(r for r in rows if r["method"] == "eagle2")
    assert spec_row["status"] == "ok" and len(spec_row["draft_hash"]) == 16
    assert json.loads((out / "inputs.json").read_text())["drafts"] == {str(folder): spec_row["draft_hash"]}

    new_draft("eagle2", target_fp32, seed=1).save(folder)  # retrained in place
    res = sweep(out, shared_eval_dir, *flags, "--resume", "--retry-failed", "--top-k", "3")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"draft '{folder}'" in res.stderr and "weights hash" in res.stderr and "Traceback" not in res.stderr
    after = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["cell_id"] for r in after] == [r["cell_id"] for r in rows]  # nothing of the new draft got in


def test_resume_in_another_precision_is_refused(shared_eval_dir, default_model_dir, tmp_path):
    """`--dtype auto` is decided per machine: a resume where it decides otherwise (another CPU, a
    faster kernel) would put two precisions in one results file."""
    out = tmp_path / "out"
    res = sweep(out, shared_eval_dir, "--methods", "ar")
    assert res.returncode == 0, res.stderr
    recorded = json.loads((out / "inputs.json").read_text())
    assert recorded["dtypes"] == {"float32": "float32"}
    recorded["dtypes"] = {"float32": "bfloat16"}  # as if the first run had decoded in bf16
    (out / "inputs.json").write_text(json.dumps(recorded))
    before = pq.read_table(out / "results.parquet").to_pylist()

    res = sweep(out, shared_eval_dir, "--methods", "ar,lookup", "--resume")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "dtype 'float32'" in res.stderr and "bfloat16" in res.stderr and "another --out" in res.stderr
    assert pq.read_table(out / "results.parquet").to_pylist() == before
