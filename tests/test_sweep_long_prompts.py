"""Prompts longer than the target's context: a sweep refuses their cells with the fix named, or
with --long-prompts truncate cuts them in the middle, the same cut for AR and every tree."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from workloads.errors import ScyllaError
from workloads.long_prompts import TREE_ROOM, middle_cut, prompt_room


def test_the_cut_keeps_both_ends_and_leaves_short_prompts_alone():
    ids = list(range(100))
    assert middle_cut(ids, 100) == ids and middle_cut(ids[:10], 50) == ids[:10]
    assert middle_cut(ids, 9) == [0, 1, 2, 3, 95, 96, 97, 98, 99]
    assert prompt_room(1024, 128) == 1024 - 128 - TREE_ROOM
    with pytest.raises(ScyllaError, match="context of 200 positions leaves 8 for a prompt"):
        prompt_room(200, 128)


@pytest.fixture(scope="module")
def short_context(tmp_path_factory, default_model_dir):
    """A tiny GPT-2 with 300 learned positions: CNN/DM articles (about 700 tokens) do not fit."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2-300")
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=300, vocab_size=49152)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return folder


def sweep(model, out, *extra):
    return subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--target", str(model), "--methods", "ar,lookup",
                           "--datasets", "cnn_dm,gsm8k", "--prompts", "2", "--max-new-tokens", "8", "--top-k", "1",
                           "--depths", "3", "--warmup", "0", "--dtype", "float32", "--threads", "1", "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=600)


def test_refused_by_default_with_the_fix_named(short_context, tmp_path):
    done = sweep(short_context, tmp_path / "out")
    assert done.returncode == 1, done.stderr
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["dataset"] for r in failed} == {"cnn_dm"} and len(failed) == 2
    assert all("outgrows the context" in r["error"] and "--long-prompts truncate" in r["error"] for r in failed)
    assert all(r["prompts_truncated"] is None for r in rows)


def test_truncate_cuts_the_same_prompts_for_ar_and_the_tree(short_context, tmp_path):
    done = sweep(short_context, tmp_path / "out", "--long-prompts", "truncate")
    assert done.returncode == 0, done.stderr
    rows = {(r["method"], r["dataset"]): r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["ar", "cnn_dm"]["prompts_truncated"] == rows["lookup", "cnn_dm"]["prompts_truncated"] == 2
    assert rows["ar", "gsm8k"]["prompts_truncated"] == 0
    assert rows["lookup", "cnn_dm"]["lossless"] is True  # the same cut prompts as its AR partner


def test_auto_trees_replay_held_out_articles_cut_to_the_context(short_context, tmp_path, monkeypatch):
    """top_k auto replays the last CNN/DM prompts, which do not fit 300 positions either: they are
    cut as the measured ones are, and the sweep runs."""
    import json

    from harness import auto_trees
    from harness.runner import run_sweep
    from harness.spec import build_spec
    from scylla_impl import calibration

    monkeypatch.setattr(auto_trees, "HELD_OUT_PROMPTS", 4)
    monkeypatch.setattr(auto_trees, "REPLAY_NEW_TOKENS", 12)
    monkeypatch.setattr(calibration, "TOP_KS", (1, 3))
    monkeypatch.setattr(calibration, "MAX_DEPTH", 3)
    monkeypatch.setattr(auto_trees, "calibration_file", lambda name: tmp_path / "lookup.json")
    (tmp_path / "prof").mkdir()
    (tmp_path / "prof" / "profile.json").write_text(json.dumps({
        "profile_id": "test", "device": {"name": "cpu"}, "knee_tokens": 4, "knee": {
            "target": {"dtype": "float32"}, "prefix_tokens": 200,
            "points": [{"batch_size": 1, "tokens": n, "seconds": 0.01 * (1 + n / 64)} for n in (1, 4, 16)]}}))
    spec = build_spec(None, {"target": str(short_context), "methods": "ar,lookup", "datasets": "cnn_dm,gsm8k",
                             "prompts": "2", "max_new_tokens": "8", "top_k": "auto", "warmup": "0",
                             "dtype": "float32", "threads": "1", "long_prompts": "truncate",
                             "profile": str(tmp_path / "prof")})
    run_sweep(spec, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "auto_trees.json").read_text())
    assert record["drafts"]["lookup"]["datasets"]["cnn_dm"]["acceptance"]["positions"] > 0
    rows = [r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist() if r["method"] == "lookup"]
    assert {r["dataset"]: r["status"] for r in rows} == {"cnn_dm": "ok", "gsm8k": "ok"}
