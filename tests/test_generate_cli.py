"""`scylla generate` end to end in a real subprocess: JSON output and one-line errors."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


def scylla(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") or lines[0].startswith("Error:"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_json_speculative(default_model_dir):
    done = scylla("generate", "--prompt", "Name three primary colors.", "--prompt", "What is 2+2?",
                  "--method", "spec", "--draft", "random:scylla", "--layers", "2", "--top-k", "4",
                  "--depth", "3", "--total-tokens", "12", "--max-new-tokens", "8", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["outputs"]) == 2
    assert all(1 <= len(o["token_ids"]) <= 8 for o in out["outputs"])
    assert out["steps"] >= 1 and out["tau"] >= 1.0 and out["tokens_per_s"] > 0


def test_vs_ar_measures_the_speedup_and_checks_the_outputs_are_ars(default_model_dir):
    base = ("generate", "--prompt", "Name three primary colors.", "--draft", "random:eagle2", "--top-k", "4",
            "--depth", "3", "--total-tokens", "8", "--lookup-tokens", "4", "--max-new-tokens", "12", "--vs-ar")
    greedy = scylla(*base, "--json")
    assert greedy.returncode == 0, greedy.stderr
    out = json.loads(greedy.stdout)
    vs = out["vs_ar"]
    assert vs["same_as_ar"] is True and vs["ar_tokens_per_s"] > 0
    assert vs["speedup"] == pytest.approx(out["tokens_per_s"] / vs["ar_tokens_per_s"])
    sampled = scylla(*base, "--temperature", "0.8")  # its outputs differ from AR's by design: no claim
    assert sampled.returncode == 0, sampled.stderr
    last = sampled.stderr.strip().splitlines()[-1]
    assert "AR tokens/s" in last and "x" in last.split("speedup")[1] and "AR'S" not in last.upper()


def test_generate_ar_tau_is_one(default_model_dir):
    done = scylla("generate", "--prompt", "Say hello.", "--method", "ar", "--max-new-tokens", "6", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tau"] == 1.0


@pytest.mark.parametrize("args,words", [
    (["--target", "/no/such/model"], ["/no/such/model", "no such folder"]),
    (["--target", "no/such/model/here"], ["no such folder"]),
    (["--target", "tests"], ["'tests'", "no config.json"]),
    (["--top-k", "60000", "--depth", "1", "--total-tokens", "2"], ["larger than the draft's vocabulary"]),
    (["--device", "cuda"], ["no CUDA device"]),
    (["--device", "cuda:7"], ["no CUDA device"]),
    (["--max-new-tokens", "x"], ["'x' is not a valid integer", "scylla generate --help"]),
    (["--no-such-flag"], ["No such option", "--help"]),
    (["--top-k", "wide"], ["'wide' is neither 'auto' nor a whole number"]),
    (["--lookup-tokens", "-1"], ["-1 is not in the range x>=0"]),
])
def test_bad_input_is_one_line(args, words):
    """Options click refuses, and values only the machine, the target or the draft can refute
    (a plain value's own check: test_package_layers.py)."""
    base = ["generate", "--method", "spec", "--draft", "random:eagle2", "--max-new-tokens", "4"]
    if "--prompt" not in args:
        base += ["--prompt", "hi"]
    assert_one_line_error(scylla(*base, *args), *words)


def test_draft_for_another_target_is_refused(tmp_path, default_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from scylla_impl.drafts import new_draft
    from scylla_impl.target import Target

    tiny = tmp_path / "tiny-llama"
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152)
    LlamaForCausalLM(config).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tiny)
    new_draft("eagle2", Target.load(str(tiny), dtype="float32")).save(tmp_path / "draft")
    done = scylla("generate", "--prompt", "hi", "--draft", str(tmp_path / "draft"), "--max-new-tokens", "4")
    assert_one_line_error(done, "was trained for target", str(tiny))


def test_a_model_folder_without_a_tokenizer_is_one_line(tmp_path, default_model_dir):
    (tmp_path / "config.json").write_bytes((default_model_dir / "config.json").read_bytes())
    done = scylla("generate", "--target", str(tmp_path), "--prompt", "hi", "--method", "ar", "--max-new-tokens", "4")
    assert_one_line_error(done, str(tmp_path), "no tokenizer it can load", "tokenizer.json")


def test_generate_on_a_tokenizer_without_a_chat_template(tmp_path, default_model_dir):
    """Base models and GGUF conversions often ship no chat template: generate formats the prompt
    with the same plain fallback the sweep uses, instead of a traceback."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tiny = tmp_path / "base-llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=49152)).save_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tiny)
    (tiny / "chat_template.jinja").unlink(missing_ok=True)
    assert AutoTokenizer.from_pretrained(tiny).chat_template is None
    done = scylla("generate", "--target", str(tiny), "--prompt", "hi", "--method", "spec", "--draft", "lookup",
                  "--top-k", "1", "--depth", "3", "--total-tokens", "4", "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert 1 <= len(json.loads(done.stdout)["outputs"][0]["token_ids"]) <= 4


def test_auto_without_a_checkpoint_folder_says_it_decodes_the_default_tree(default_model_dir):
    done = scylla("generate", "--prompt", "hi", "--draft", "random:eagle2", "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert "random:eagle2 does not keep" in done.stderr and "(k=10 d=5 n=60)" in done.stderr
    assert json.loads(done.stdout)["tree"] is None


def test_auto_prices_the_tree_once_then_reads_the_checkpoints_acceptance(tmp_path, default_model_dir, monkeypatch):
    """The default --top-k auto on a checkpoint draft: the first run replays its acceptance into the
    folder's calibration.json, every run times this device and decodes with the tree it priced best.
    In process, so the replay can be shortened (the real one is 24 prompts of 64 tokens)."""
    from click.testing import CliRunner
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness import auto_trees
    from harness.cli import cli
    from scylla_impl import calibration
    from scylla_impl.drafts import new_draft
    from scylla_impl.target import Target

    monkeypatch.setattr(auto_trees, "HELD_OUT_PROMPTS", 6)
    monkeypatch.setattr(auto_trees, "REPLAY_NEW_TOKENS", 8)
    monkeypatch.setattr(calibration, "TOP_KS", (1, 3))
    monkeypatch.setattr(calibration, "MAX_DEPTH", 3)
    tiny = tmp_path / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=49152)).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tiny)
    new_draft("eagle2", Target.load(str(tiny), dtype="float32")).save(tmp_path / "draft")
    args = ["generate", "--target", str(tiny), "--dtype", "float32", "--draft", str(tmp_path / "draft"),
            "--prompt", "Name a color.", "--prompt", "Count to three.", "--max-new-tokens", "6", "--json"]
    runs = [CliRunner().invoke(cli, args) for _ in range(2)]
    for done in runs:
        assert done.exit_code == 0, done.output
        assert "auto tree: timing" in done.stderr
        tree = json.loads(done.stdout)["tree"]
        choice, ar = tree["choice"], tree["ar"]
        assert choice["batch_size"] == ar["batch_size"] == 2
        assert choice["total_tokens"] > 1 and ar["total_tokens"] == 1
        assert choice["top_k"] in (1, 3) and choice["depth"] <= 3
        assert choice["tokens_per_s"] > 0 and ar["tokens_per_s"] > 0
        said = next(line for line in done.stderr.splitlines() if line.startswith("auto tree: k="))
        assert said.startswith(f"auto tree: k={choice['top_k']} d={choice['depth']} n={choice['total_tokens']},")
    assert "replaying draft" in runs[0].stderr and "replaying draft" not in runs[1].stderr
    # Off a terminal the replay's progress is the project's periodic line, ending at its total.
    assert "[auto trees] replay: 6/6 prompts, " in runs[0].stderr
    stored = json.loads((tmp_path / "draft" / "calibration.json").read_text())
    assert len(stored) == 6  # one table per dataset, one held-out prompt each
    assert 0 < sum(t["positions"] for t in stored.values()) <= 6 * 8  # positions with a full tree after them


def test_auto_refuses_a_prompt_past_the_context_before_pricing(tmp_path, default_model_dir):
    """The replay that prices trees takes a minute on first use: a prompt the target cannot hold
    is refused before it, in one line."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from scylla_impl.drafts import new_draft
    from scylla_impl.target import Target

    tiny = tmp_path / "gpt2-300"
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=300, vocab_size=49152)).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tiny)
    new_draft("eagle2", Target.load(str(tiny), dtype="float32")).save(tmp_path / "draft")
    done = scylla("generate", "--target", str(tiny), "--dtype", "float32", "--draft", str(tmp_path / "draft"),
                  "--prompt", " ".join(["word"] * 400), "--max-new-tokens", "4")
    assert_one_line_error(done, "new tokens needs", "takes 300")
    assert not (tmp_path / "draft" / "calibration.json").exists()


def _unreachable_hub(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache of its own, and an endpoint that refuses at once (nothing listens on
    port 9): what a machine without hub access sees, without waiting on DNS."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def test_a_hub_id_without_the_hub_is_one_line_at_once(tmp_path, monkeypatch):
    _unreachable_hub(tmp_path, monkeypatch)
    started = time.perf_counter()
    done = scylla("generate", "--target", "someorg/notcached", "--prompt", "hi", "--method", "ar")
    assert_one_line_error(done, "cannot load target 'someorg/notcached': it is not in the Hugging Face cache",
                          "http://127.0.0.1:9 cannot be reached")
    assert time.perf_counter() - started < 60  # transformers alone retries for about a minute


def test_a_cached_hub_id_loads_without_the_hub(tmp_path, monkeypatch, default_model_dir):
    cache = _unreachable_hub(tmp_path, monkeypatch)
    repo = cache / "models--someorg--smol"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in default_model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)  # as the hub's cache links its blobs
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")

    done = scylla("generate", "--target", "someorg/smol", "--prompt", "What is 2+2?", "--method", "ar",
                  "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["outputs"]) == 1
