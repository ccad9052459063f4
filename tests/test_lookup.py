"""Prompt lookup, the training-free draft: the n-gram match itself, and decoding with it on the
embedded default target, where copying text from the prompt is accepted in long runs."""

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft
from scylla_impl.ngrams import lookup


def test_the_longest_suffix_matches_its_most_recent_occurrence():
    #        0  1  2  3  4  5  6  7  8  9
    history = [5, 6, 7, 8, 1, 6, 7, 9, 6, 7]
    assert lookup(history, 3, 4) == [9, 6, 7]  # (6, 7) last seen at 5..6, followed by 9
    assert lookup(history + [8], 3, 2) == [1, 6]  # (6, 7, 8) only at 1..3
    assert lookup([1, 2, 3], 3, 4) == []
    assert lookup([4], 3, 4) == []


TEXT = ("The committee approved the budget for the new library on Monday, and the mayor said that "
        "construction of the new library will begin next spring.")


def _copy_and_code(tok) -> tuple[list[int], list[int]]:
    messages = [{"role": "user", "content": f"Repeat this sentence exactly: {TEXT}"}]
    prompt = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    return prompt, tok("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n", add_special_tokens=False)["input_ids"]


def test_lookup_decodes_losslessly_and_copies_from_the_prompt(target_fp32):
    prompt, other = _copy_and_code(target_fp32.tokenizer)
    text = TEXT
    config = DecodeConfig(top_k=1, depth=6, total_tokens=7, max_new_tokens=32)
    ar = generate(target_fp32, [prompt, other], None, config)
    spec = generate(target_fp32, [prompt, other], load_draft("lookup", target_fp32), config)
    assert spec.token_ids == ar.token_ids
    assert text[:40] in spec.texts[0]  # the target does copy: the case prompt lookup is for
    steps = spec.stats.active[:, 0].sum()
    assert spec.stats.emitted[:, 0].sum() / steps > 2.0  # so long runs of the copy are accepted
    assert spec.stats.steps < ar.stats.steps


def test_a_chain_grafted_under_a_drafts_tree_is_lossless_and_accepted(target_fp32):
    """A random draft's tree accepts almost nothing; with the lookup chain grafted under its root
    the copy is accepted in long runs, rows finish apart, and the text is still AR's."""
    prompt, other = _copy_and_code(target_fp32.tokenizer)
    draft = load_draft("random:eagle2", target_fp32, seed=1)
    plain = DecodeConfig(top_k=2, depth=2, total_tokens=4, max_new_tokens=32)
    grafted = DecodeConfig(top_k=2, depth=2, total_tokens=4, max_new_tokens=32, lookup_tokens=6)
    ar = generate(target_fp32, [prompt, other], None, plain)
    without = generate(target_fp32, [prompt, other], draft, plain)
    with_chain = generate(target_fp32, [prompt, other], draft, grafted)
    assert with_chain.token_ids == without.token_ids == ar.token_ids
    assert with_chain.stats.accepted[:, 0].max() > plain.depth  # a run only the chain reaches
    copy_tau = with_chain.stats.emitted[:, 0].sum() / with_chain.stats.active[:, 0].sum()
    assert copy_tau > 3.0 and with_chain.stats.tau > without.stats.tau + 0.5  # measured 4.5, 1.76 and 1.0
    assert set(with_chain.stats.drafted[with_chain.stats.active].tolist()) <= set(range(3, 3 + 6 + 1))
