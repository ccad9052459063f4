"""Speculative sampling is lossless: the tokens it emits follow the target's own sampling
distribution, whatever the draft proposes; a broken acceptance rule is caught."""

import pytest
import torch
from scipy.stats import chisquare

import scylla_impl.verify as verify_mod
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import OracleDraft, load_draft
from scylla_impl.tree import build_tree, graft_chain
from scylla_impl.verify import target_probs, verify_sampling

TEMPERATURE = 1.0
SAMPLES = 2000


def _scored_tree(target, prompt, draft, top_k=4, depth=3, total=12, chain=()):
    """Build a tree with `draft` at the end of a real prompt, graft `chain` under its root, and
    score it with the target."""
    cache = target.new_cache(1)
    out = target.prefill(cache, [prompt], draft.feature_layers)
    root = out.logits[0, -1].argmax()[None]
    draft.start([prompt])
    feats = out.layer_inputs if draft.feature_layers else out.hidden
    pairs = torch.tensor([prompt[1:] + [int(root)]])
    lp, dh = draft.extend(pairs, feats, torch.tensor([len(prompt)]))
    tree = graft_chain(build_tree(draft, lp, dh, root, top_k, depth, total), [list(chain)], len(chain))
    scored = target.forward_tree(cache, tree.tokens, tree.depths, tree.mask)
    return tree, scored.logits


def _emitted(tree, logits, n, row=0):
    """First and second emitted tokens of `row` in n independent verifications."""
    firsts, seconds = [], []
    for seed in range(n):
        gen = torch.Generator().manual_seed(seed)
        v = verify_sampling(tree, logits, TEMPERATURE, 1.0, gen)
        path = v.path[row, : int(v.path_len[row])].tolist()
        emitted = tree.tokens[row, path[1:]].tolist() + [int(v.bonus[row])]
        firsts.append(emitted[0])
        seconds.append((path[1] if len(path) > 1 else None, emitted[1] if len(emitted) > 1 else None))
    return firsts, seconds


def _pvalue(samples: list[int], probs: torch.Tensor) -> float:
    """Chi-square p-value of samples against probs, tokens with expected count >= 5 kept apart."""
    n = len(samples)
    expected = probs * n
    big = (expected >= 5).nonzero().flatten().tolist()
    counts = {t: 0 for t in big}
    other = 0
    for s in samples:
        if s in counts:
            counts[s] += 1
        else:
            other += 1
    obs = [counts[t] for t in big] + [other]
    exp = [float(expected[t]) for t in big] + [max(n - float(expected[big].sum()), 1e-9)]
    scale = n / sum(exp)  # float32 probabilities do not sum to exactly 1
    return float(chisquare(obs, [e * scale for e in exp]).pvalue)


@pytest.fixture(scope="module")
def prompt(mt_bench_prompts):
    return mt_bench_prompts[3]


@pytest.fixture(scope="module")
def oracle_tree(target_fp32, prompt):
    # The target's own top-k as candidates: high-probability children make a biased rule visible.
    return _scored_tree(target_fp32, prompt, OracleDraft(target_fp32))


@pytest.fixture(scope="module")
def oracle_samples(oracle_tree):
    return _emitted(*oracle_tree, SAMPLES)


def test_first_token_follows_target_with_good_candidates(oracle_tree, oracle_samples):
    _, logits = oracle_tree
    firsts, _ = oracle_samples
    assert _pvalue(firsts, target_probs(logits[0, 0], TEMPERATURE)) > 1e-3


def test_second_token_follows_target_given_first(oracle_tree, oracle_samples):
    _, logits = oracle_tree
    _, seconds = oracle_samples
    node = max({n for n, _ in seconds if n is not None}, key=lambda n: sum(1 for m, _ in seconds if m == n))
    given = [tok for n, tok in seconds if n == node]
    assert len(given) > 200
    assert _pvalue(given, target_probs(logits[0, node], TEMPERATURE)) > 1e-3


def test_bad_draft_does_not_change_the_distribution(target_fp32, prompt, oracle_tree):
    """A random draft's tree, verified in one batch beside the oracle's (rows walk to different
    depths at once): each row's first token still follows its target distribution."""
    from scylla_impl.tree import Tree

    bad, bad_logits = _scored_tree(target_fp32, prompt, load_draft("random:eagle2", target_fp32, seed=3))
    good, good_logits = oracle_tree
    assert bad.size == good.size
    tree = Tree(*(torch.cat([getattr(good, f), getattr(bad, f)]) for f in ("tokens", "parents", "depths", "mask")))
    logits = torch.cat([good_logits, bad_logits])
    for row in (0, 1):
        firsts, _ = _emitted(tree, logits, SAMPLES, row)
        assert _pvalue(firsts, target_probs(logits[row, 0], TEMPERATURE)) > 1e-3


def test_a_grafted_chain_does_not_change_the_distribution(target_fp32, prompt):
    """A random draft's tree with the target's own greedy continuation grafted under its root:
    the chain is often accepted, and the first token, and the second after the chain's first
    node, still follow the target's distributions."""
    from scylla_impl.decode import generate

    greedy = generate(target_fp32, [prompt], None, DecodeConfig(max_new_tokens=4)).token_ids[0]
    draft = load_draft("random:eagle2", target_fp32, seed=3)
    tree, logits = _scored_tree(target_fp32, prompt, draft, chain=greedy[1:4])
    node = tree.size - 3  # the chain's first node (none of it was in the random tree)
    assert tree.tokens[0, node:].tolist() == greedy[1:4] and tree.parents[0, node] == 0
    firsts, seconds = _emitted(tree, logits, SAMPLES)
    assert _pvalue(firsts, target_probs(logits[0, 0], TEMPERATURE)) > 1e-3
    given = [tok for n, tok in seconds if n == node]
    assert len(given) > 200
    assert _pvalue(given, target_probs(logits[0, node], TEMPERATURE)) > 1e-3


def test_broken_rule_is_caught(oracle_tree, monkeypatch):
    # Forgetting to remove a rejected token from the residual re-emits rejected candidates.
    monkeypatch.setattr(verify_mod, "without", lambda p, token: p)
    tree, logits = oracle_tree
    firsts, _ = _emitted(tree, logits, SAMPLES)
    assert _pvalue(firsts, target_probs(logits[0, 0], TEMPERATURE)) < 1e-6


def test_sampled_decode_is_seeded_and_runs(target_fp32, prompt):
    from scylla_impl.decode import generate

    draft = load_draft("random:scylla", target_fp32, seed=0)
    config = DecodeConfig(top_k=4, depth=3, total_tokens=12, temperature=0.8, top_p=0.9, max_new_tokens=12, seed=7)
    a = generate(target_fp32, [prompt], draft, config)
    b = generate(target_fp32, [prompt], draft, config)
    assert a.token_ids == b.token_ids
    assert 1 <= len(a.token_ids[0]) <= 12
