"""Bad draft checkpoints, as a user would hand them over: each ends in one `error:` line from
`scylla generate`, and a sweep whose draft is broken records the failed cells, writes its
results and exits non-zero."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from test_train import make_tiny

from scylla_impl.drafts import new_draft
from scylla_impl.target import Target


def scylla(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


def good_draft(tiny, folder):
    new_draft("scylla", Target.load(str(tiny), dtype="float32"), layers=1, draft_vocab=1024).save(folder)
    return folder


def non_utf8_config(folder):
    (folder / "config.json").write_bytes(b"\xff\xfe{ not json")


def truncated_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def garbage_weights(folder):
    (folder / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)


def wrong_shapes(folder):
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))


def old_format(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["format"]
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage,words", [
    (non_utf8_config, ["bad draft config"]),
    (truncated_weights, ["model.safetensors cannot be read"]),
    (garbage_weights, ["model.safetensors cannot be read"]),
    (wrong_shapes, ["does not match its config", "size mismatch"]),
    (old_format, ["checkpoint format 1", "retrain it"]),
])
def test_a_broken_draft_is_one_line(damage, words, tiny, tmp_path):
    folder = good_draft(tiny, tmp_path / "draft")
    damage(folder)
    done = scylla("generate", "--target", str(tiny), "--prompt", "hi", "--draft", str(folder),
                  "--max-new-tokens", "4", "--dtype", "float32")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_a_sweep_with_a_broken_draft_fails_loudly_and_keeps_its_results(tiny, tmp_path, shared_eval_dir):
    folder = good_draft(tiny, tmp_path / "draft")
    truncated_weights(folder)
    out = tmp_path / "out"
    done = scylla("sweep", "--target", str(tiny), "--methods", "ar,scylla", "--draft", f"scylla={folder}",
                  "--datasets", "gsm8k", "--prompts", "1", "--max-new-tokens", "4", "--top-k", "2", "--depths", "2",
                  "--total-tokens", "3", "--warmup", "0", "--dtype", "float32", "--threads", "1",
                  "--data-dir", str(shared_eval_dir), "--out", str(out))
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 cell(s) failed") and "--retry-failed" in last, done.stderr
    rows = {r["method"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert rows["ar"]["status"] == "ok" and rows["scylla"]["status"] == "failed"
    assert "model.safetensors cannot be read" in rows["scylla"]["error"]
