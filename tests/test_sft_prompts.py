"""SFT prompts by domain (ShareGPT, standard-library code, templated math) and the cache of the
target's answers to them, which any mix, seed or budget reuses by prompt id."""

import ast
import itertools
import json

import pytest

from scylla_impl.precision import fast_dtype
from scylla_impl.training import answers
from workloads import ScyllaError
from workloads.corpora import prompt_sources, sft_prompts
from workloads.corpora.decontaminate import Decontaminator
from workloads.records import HUMANEVAL_FRAME


def first(n, iterable):
    return list(itertools.islice(iterable, n))


def test_code_prompts_are_framed_stubs_the_target_completes():
    prompts = first(50, prompt_sources.code_prompts(0))
    assert len({pid for pid, _ in prompts}) == 50
    for _pid, text in prompts:
        assert text.startswith(HUMANEVAL_FRAME)
        (func,) = ast.parse(text.removeprefix(HUMANEVAL_FRAME)).body
        assert isinstance(func, ast.FunctionDef)
        assert len(func.body) == 1 and ast.get_docstring(func)  # the body is left to write
        assert len(ast.get_docstring(func).split()) >= prompt_sources.MIN_DOC_WORDS
    assert first(50, prompt_sources.code_prompts(0)) == prompts
    assert first(50, prompt_sources.code_prompts(1)) != prompts


def test_math_prompts_are_distinct_word_problems_fixed_by_seed():
    prompts = first(500, prompt_sources.math_prompts(3))
    texts = [t for _, t in prompts]
    assert len(set(texts)) == 500 and len({pid for pid, _ in prompts}) == 500
    assert all(any(c.isdigit() for c in t) and t.rstrip().endswith("?") for t in texts)
    assert first(500, prompt_sources.math_prompts(3)) == prompts
    # Ids name the text, so the same problem drawn under another seed finds its cached answer.
    other = dict((t, pid) for pid, t in first(5000, prompt_sources.math_prompts(4)))
    shared = [t for t in texts if t in other]
    assert shared and all(other[t] == dict((t2, p) for p, t2 in prompts)[t] for t in shared)


def test_mix_interleaves_sources_by_share():
    prompts = first(400, sft_prompts(0, mix={"sharegpt": 2, "code": 1, "math": 1}))
    kinds = [pid.split("/")[0] if "/" in pid else "sharegpt" for pid, _ in prompts]
    counts = {k: kinds.count(k) for k in ("sharegpt", "stdlib", "math")}
    # Shares hold before decontamination drops a few ShareGPT prompts.
    assert abs(counts["sharegpt"] - 200) <= 10 and abs(counts["stdlib"] - 100) <= 2 and abs(counts["math"] - 100) <= 2
    assert all(m == [{"role": "user", "content": m[0]["content"]}] for _, m in prompts)
    # No mix is ShareGPT alone, in the order a mix takes its ShareGPT share in.
    alone = first(50, sft_prompts(0))
    assert [p for p, _ in alone[:20]] == [p for p, _ in prompts if "/" not in p][:20]


def test_mix_errors_name_the_known_sources():
    with pytest.raises(ScyllaError, match=r"unknown SFT prompt source\(s\) \['wiki'\].*sharegpt, code, math"):
        next(sft_prompts(0, mix={"wiki": 1}))
    with pytest.raises(ScyllaError, match="non-negative and not all zero"):
        next(sft_prompts(0, mix={"code": 0}))


def test_generated_prompts_are_decontaminated(monkeypatch, shared_eval_dir):
    from workloads import load_dataset

    planted = load_dataset("gsm8k", data_dir=shared_eval_dir)[0].turns[0]
    fake = prompt_sources.PromptSource("math", "planted", lambda seed: iter([("math/a", "What is 2 + 3?"),
                                                                           ("math/b", planted),
                                                                           ("math/c", "What is 4 + 4?")]))
    monkeypatch.setitem(prompt_sources.PROMPT_SOURCES, "math", fake)
    ids = [pid for pid, _ in sft_prompts(0, mix={"math": 1}, data_dir=shared_eval_dir)]
    assert ids == ["math/a", "math/c"]
    assert Decontaminator([planted]).contaminated(planted)


def test_train_config_checks_the_mix():
    from scylla_impl.training.config import TrainConfig, parse_shares

    assert parse_shares("sharegpt=2, code=1,math=0.5", "--sft-mix") == {"sharegpt": 2.0, "code": 1.0, "math": 0.5}
    for bad in ("sharegpt", "code=x", "=1"):
        with pytest.raises(ScyllaError, match="is not SOURCE=SHARE"):
            parse_shares(bad, "--sft-mix")
    base = dict(method="eagle3", sft_tokens=4096, dtype="float32")
    with pytest.raises(ScyllaError, match="needs --sft-answers target"):
        TrainConfig(**base, sft_mix={"code": 1.0})
    with pytest.raises(ScyllaError, match=r"unknown SFT prompt source\(s\) \['web'\]"):
        TrainConfig(**base, sft_answers="target", sft_mix={"web": 1.0})
    with pytest.raises(ScyllaError, match="not all zero"):
        TrainConfig(**base, sft_answers="target", sft_mix={"code": float("nan")})


# --- the answer cache ---------------------------------------------------------------------


@pytest.fixture
def small_answers(monkeypatch, tmp_path):
    """Short answers in small batches, cached under a fresh SCYLLA_HOME; counts answered prompts."""
    monkeypatch.setattr(answers, "ANSWER_TOKENS", 6)
    monkeypatch.setattr(answers, "BATCH", 4)
    monkeypatch.setattr(answers, "MAX_PROMPT_TOKENS", 96)
    monkeypatch.setattr(answers, "scylla_home", lambda: tmp_path)
    from scylla_impl import decode

    made = []
    real = decode.generate

    def counting(target, prompts, draft, config):
        made.extend(prompts)
        return real(target, prompts, draft, config)

    monkeypatch.setattr(decode, "generate", counting)
    return made


def test_answers_are_made_once_and_reused_by_any_mix_and_budget(target_fp32, small_answers):
    mix = {"sharegpt": 1, "math": 1}
    big = answers.target_answers(target_fp32, 600, mix=mix)
    made = len(small_answers)
    assert made >= len(big) > 4 and all(c[-1]["role"] == "assistant" and c[-1]["content"] for c in big)
    assert any(c[0]["content"] in {t for _, t in first(50, prompt_sources.math_prompts(0))} for c in big)
    # Same run again: nothing to make, the same data.
    assert answers.target_answers(target_fp32, 600, mix=mix) == big
    assert len(small_answers) == made
    # A smaller budget takes the shortest prefix of the prompt order, whatever the cache holds beyond it.
    small = answers.target_answers(target_fp32, 200, mix=mix)
    assert small == big[:len(small)] and len(small) < len(big)
    assert len(small_answers) == made
    # ShareGPT alone reuses the ShareGPT answers the mix made and makes only the rest.
    alone = answers.target_answers(target_fp32, 600)
    reused = [c for c in alone if c in big]
    assert reused and len(alone) - len(reused) <= len(small_answers) - made < len(alone) - len(reused) + answers.BATCH
    # Too-long prompts are recorded once, unanswered, and never returned.
    records = [json.loads(line) for line in answers.answers_path(target_fp32, fast_dtype("cpu"), None).read_text().splitlines()]
    assert any(r["messages"] is None for r in records)
    assert len({r["id"] for r in records}) == len(records)


def test_a_window_of_prompts_is_answered_shortest_first(target_fp32, small_answers, monkeypatch, tmp_path):
    """Batches of similar lengths pad little; the data is the same as batches in prompt order."""
    from scylla_impl import decode

    calls, counting = [], decode.generate
    monkeypatch.setattr(decode, "generate", lambda t, prompts, *a: calls.append([len(p) for p in prompts]) or counting(t, prompts, *a))
    by_length = answers.target_answers(target_fp32, 600)
    lengths = [len(p) for p in small_answers]
    # The first window (the prompts that can at most fill the budget) is more than two batches.
    assert len(calls) > 2 and calls[0] == sorted(calls[0]) and max(calls[0]) <= min(calls[1])
    monkeypatch.setattr(answers, "WINDOW", answers.BATCH)
    monkeypatch.setattr(answers, "scylla_home", lambda: tmp_path / "in order")
    assert answers.target_answers(target_fp32, 600) == by_length
    assert [len(p) for p in small_answers[len(lengths):]] != lengths


def test_a_torn_last_answer_is_made_again(target_fp32, small_answers, monkeypatch):
    monkeypatch.setattr(answers, "MARGIN", 1.0)
    monkeypatch.setattr(answers, "BATCH", 1)  # the last record made is the last one this budget needs
    first_run = answers.target_answers(target_fp32, 300)
    path = answers.answers_path(target_fp32, fast_dtype("cpu"), None)
    lines = path.read_text().splitlines(keepends=True)
    torn = json.loads(lines[-1])
    path.write_text("".join(lines[:-1]) + lines[-1][:10])  # the last record cut short by a kill
    made = len(small_answers)
    assert answers.target_answers(target_fp32, 300) == first_run
    # Made again only where this run needs it: the torn record may lie past its budget's prefix.
    assert len(small_answers) == made + (torn["messages"] in first_run)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_the_recipe_mixes_domains_unless_answers_are_sharegpts_own():
    from scylla_impl.training.config import SFT_MIX, recipe

    assert recipe("eagle3", dtype="float32").sft_mix == SFT_MIX
    # EAGLE-2 as published trains on ShareGPT's own answers, which only ShareGPT's prompts have.
    assert recipe("eagle2", dtype="float32", draft_vocab=0, ttt_steps=1, sft_answers="sharegpt").sft_mix is None
    with pytest.raises(ScyllaError, match="needs --sft-answers target"):
        recipe("eagle2", dtype="float32", sft_answers="sharegpt", sft_mix={"sharegpt": 1, "code": 1})
    config = recipe("scylla", layers=3, dtype="float32")
    config.sft_mix["code"] = 5.0  # a config's mix is its own
    assert SFT_MIX["code"] == 1.0


def test_a_target_that_answers_nothing_is_one_clear_error(small_answers, tmp_path, default_model_dir):
    """A tiny random GPT-2 answers every chat prompt with newlines only: after two batches of
    empty answers the run says so, instead of asking every SFT prompt there is."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from scylla_impl.target import Target

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=49152))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)
    model.save_pretrained(tmp_path / "gpt2")
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tmp_path / "gpt2")
    target = Target.load(str(tmp_path / "gpt2"), dtype="float32")
    with pytest.raises(ScyllaError, match=r"answered none of the last 8 SFT prompts .*\(--sft-answers sharegpt\)"):
        answers.target_answers(target, 600)
    assert len(small_answers) == answers.EMPTY_BATCHES * answers.BATCH
