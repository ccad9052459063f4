"""The compiled path (--compile): static KV caches, and torch.compile'd target steps and draft
levels that decode exactly as the eager ones do."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft
from scylla_impl.kv_cache import RowKVCache
from scylla_impl.target import Target


def scylla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=1200)


def test_static_cache_doubles_when_short_and_keeps_every_row_as_the_growing_one():
    """Same writes, commits and row drops into a growing and a static cache that starts too
    small: the static one doubles, keeps its buffers at `capacity`, masks every slot it does
    not use, and holds the same committed keys per row."""
    torch.manual_seed(0)
    caches = {static: RowKVCache(1, 3, "cpu", capacity=4, static=static) for static in (False, True)}
    for step in range(6):
        q = 3
        key, value = torch.randn(2, 3, 1, q, 8).unbind(0)  # [b, heads, q, d] each
        for static, cache in caches.items():
            if step == 4:
                cache.keep_rows(torch.tensor([0, 2]))
            b = cache.batch_size
            mask = cache.attention_mask(torch.tril(torch.ones(q, q, dtype=torch.bool)).expand(b, q, q))
            keys, _ = cache.update(0, key[:b], value[:b])
            assert mask.shape[-1] == keys.shape[2]
            if static:
                assert keys.shape[2] == cache.capacity
                assert not mask[..., cache.committed_end + q:].any()  # slots past the forward
            cache.advance(torch.arange(q).expand(b, q))
            cache.commit(torch.tensor([[0, 1, 2]] * b), torch.tensor([3, 1, 2][:b]))
    growing, static = caches[False], caches[True]
    assert static.capacity > 4 and torch.equal(growing.lengths, static.lengths)
    for row, length in enumerate(static.lengths.tolist()):
        assert torch.equal(growing.keys[0][row, :, :length], static.keys[0][row, :, :length])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, default_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=49152))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)  # clear greedy choices, away from float ties
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_compiled_steps_decode_token_for_token_as_eager(tiny_llama):
    """AR and a draft tree at batch 3, where one row stops early (the batch shrinks to 2, then
    its static caches drop a row): the compiled path gives the eager path's tokens, and a second
    run compiles nothing new."""
    from torch._dynamo.utils import counters

    eager, compiled = (Target.load(str(tiny_llama), dtype="float32", compile=c) for c in (False, True))
    tok = eager.tokenizer
    prompts = [tok(p)["input_ids"] for p in ("Write a haiku about the sea.", "Name three rivers.",
                                             "List three prime numbers bigger than one hundred.")]
    probe = generate(eager, prompts, None, DecodeConfig(max_new_tokens=16))
    stop = probe.token_ids[1][5]  # row 1 stops at its 6th token
    for target in (eager, compiled):
        target.eos_ids = frozenset([stop])
    tree = DecodeConfig(top_k=4, depth=3, total_tokens=10, max_new_tokens=16)
    for draft_spec in ("random:eagle2", "random:scylla"):
        want = generate(eager, prompts, load_draft(draft_spec, eager), tree).token_ids
        draft = load_draft(draft_spec, compiled)
        assert draft.compiled and draft.static_cache
        got = generate(compiled, prompts, draft, tree).token_ids
        assert got == want, draft_spec
        graphs = counters["stats"]["unique_graphs"]
        assert generate(compiled, prompts, draft, tree).token_ids == want
        assert counters["stats"]["unique_graphs"] == graphs, "the second run compiled again"
    want_ar = generate(eager, prompts, None, DecodeConfig(max_new_tokens=16)).token_ids
    assert len(want_ar[1]) < len(want_ar[0])  # the row really stopped early
    assert generate(compiled, prompts, None, DecodeConfig(max_new_tokens=16)).token_ids == want_ar


class _Scaler:
    """A model whose step reads a plain attribute of one of its modules: dynamo's guard on that
    attribute is among those compile_step skips."""

    def __init__(self, width: int, doubles: bool):
        self.proj = torch.nn.Linear(width, width, bias=False)
        self.proj.doubles = doubles

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.proj(tokens)
        return out * 2 if self.proj.doubles else out

    def breaking_step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.proj(tokens)
        torch._dynamo.graph_break()
        return out + 1


def test_compiled_steps_of_two_models_never_share_a_graph(capsys):
    """Skipping the guards on modules is safe only because each model's step has its own code
    object: a second model of the same class, differing only in a module attribute the skipped
    guards would have checked, gets its own graph and its own answer. A step that breaks the
    graph still runs, compiled with every guard kept, and says so."""
    from scylla_impl.compiled import compile_step

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        for doubles in (True, False):
            model = _Scaler(8, doubles)
            assert torch.allclose(compile_step(model.step, "a step")(x), model.step(x))
        model = _Scaler(8, True)
        assert torch.allclose(compile_step(model.breaking_step, "a breaking step")(x), model.breaking_step(x))
    assert "a breaking step does not compile to one graph" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_with_compile_records_it_and_stays_lossless(tiny_llama, tmp_path, shared_eval_dir):
    out = tmp_path / "run"
    done = scylla("sweep", "--target", str(tiny_llama), "--methods", "ar,lookup", "--datasets", "gsm8k",
                  "--batch-sizes", "1,2", "--top-k", "2", "--depths", "3", "--prompts", "2", "--max-new-tokens", "8",
                  "--warmup", "4", "--dtype", "float32", "--data-dir", str(shared_eval_dir), "--compile",
                  "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiling the target's step" in done.stderr
    results = pd.read_parquet(out / "results.parquet")
    assert (results["status"] == "ok").all() and results["compiled"].all()
    assert results.loc[results["method"] != "ar", "lossless"].all()
    assert yaml.safe_load((out / "spec.yaml").read_text())["compile"] is True


def test_compile_without_a_warm_up_is_refused(tmp_path):
    done = scylla("sweep", "--methods", "ar", "--compile", "--warmup", "0", "--out", str(tmp_path / "run"))
    assert done.returncode != 0 and "needs --warmup >= 1" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_compile_gain_table_says_when_compiling_pays():
    from reports.compile_gain import format_table

    table = format_table([("AR step", {"eager": 0.040, "compiled": 0.030}, 50.0),
                          ("forward 60 tokens", {"eager": 0.200, "compiled": 0.210}, 60.0)])
    ar, wide = table.splitlines()[1:3]
    assert "0.75" in ar and "5,000 calls" in ar  # 50 s of compile over 10 ms saved per call
    assert "1.05" in wide and wide.rstrip().endswith("never")


@pytest.mark.slow
def test_compile_gain_runs_end_to_end(tiny_llama):
    done = subprocess.run([sys.executable, "-m", "reports.compile_gain", "--target", str(tiny_llama), "--drafts",
                           "eagle2", "--rounds", "1", "--steps", "2"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line[:28].strip(): line[28:] for line in done.stdout.splitlines()[1:-1]}
    assert set(rows) == {"forward 1 tokens", "forward 8 tokens", "forward 60 tokens", "AR step", "eagle2 step (10/5/60)"}
    for cells in rows.values():
        eager, compiled, ratio = re.match(r"\s*([\d.]+)ms\s+([\d.]+)ms\s+([\d.]+)", cells).groups()
        assert float(eager) > 0 and float(compiled) > 0 and abs(float(ratio) - float(compiled) / float(eager)) < 0.1 * float(ratio)  # ms are rounded


def test_compile_gain_rejects_a_bad_draft_name():
    done = subprocess.run([sys.executable, "-m", "reports.compile_gain", "--drafts", "scylla-x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "not METHOD or METHOD-LAYERS" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_generate_with_compile_prints_what_eager_prints(tiny_llama):
    args = ["generate", "--target", str(tiny_llama), "--prompt", "Name three rivers.", "--prompt", "What is 2+2?",
            "--method", "spec", "--draft", "random:eagle2", "--top-k", "4", "--depth", "3", "--total-tokens", "10",
            "--max-new-tokens", "12", "--dtype", "float32", "--json"]
    eager, compiled = scylla(*args), scylla(*args, "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    assert "compiling the target's step" in compiled.stderr and "compiling" not in eager.stderr
    tokens = [[o["token_ids"] for o in json.loads(done.stdout)["outputs"]] for done in (eager, compiled)]
    assert tokens[0] == tokens[1] and all(tokens[0])
