"""Micro-benchmarks run by `nox -s bench` and compared with a committed pytest-benchmark file.

One tree build, one verify step and one decode step on the embedded default target (in
the dtype the bench chose, bf16 by default), with a random-init Scylla draft: timing does not depend on the
draft's weights, only on its shape, so these run before any draft is trained. Every
benchmark leaves the caches as it found them (the tree build rolls its draft cache back;
the verify forward is rolled back), so each round measures the same work.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.bench

TOP_K, DEPTH, TOTAL = 10, 5, 60
PROMPT = ("Explain, step by step, how speculative decoding verifies several draft tokens "
          "with one forward pass of the target model, and why the output does not change.")


@pytest.fixture(scope="module")
def setup():
    from scylla_impl.drafts import load_draft
    from scylla_impl.target import Target
    from scylla_impl.tree import build_tree

    torch.manual_seed(0)
    if os.environ.get("SCYLLA_BENCH_THREADS"):  # set by reports/bench.py, like the sweep's --threads
        torch.set_num_threads(int(os.environ["SCYLLA_BENCH_THREADS"]))
    # reports/bench.py passes the dtype it chose for the sweep (the faster one on this machine).
    target = Target.load("default", dtype=os.environ.get("SCYLLA_BENCH_DTYPE", "bfloat16"))
    draft = load_draft("random:scylla", target)
    prompt = target.tokenizer(PROMPT)["input_ids"]
    capacity = len(prompt) + 4 * TOTAL
    cache = target.new_cache(1, capacity)
    with torch.no_grad():
        out = target.prefill(cache, [prompt])
        root = out.logits[0, -1].argmax()[None]
        draft.start([prompt], capacity)
        pair = torch.tensor([prompt[1:] + [int(root)]])
        root_logprobs, root_out = draft.extend(pair, out.hidden, torch.tensor([len(prompt)]))
        tree = build_tree(draft, root_logprobs, root_out, root, TOP_K, DEPTH, TOTAL)
    return target, draft, cache, root, root_logprobs, root_out, tree


@pytest.fixture(autouse=True)
def _record(benchmark, setup) -> None:
    """What each time depends on besides the code (reports/micro_check.py compares like with like)."""
    benchmark.extra_info.update(dtype=str(setup[0].dtype).removeprefix("torch."), threads=torch.get_num_threads())


def _verify_and_rollback(target, cache, tree):
    """Score `tree` and verify it, leaving the cache as it was: one step's verify, repeatable."""
    from scylla_impl.verify import verify

    with torch.no_grad():
        scored = target.forward_tree(cache, tree.tokens, tree.depths, tree.mask)
        verdict = verify(tree, scored.logits)
    target.rollback(cache)
    return verdict


def test_tree_build(benchmark, setup):
    from scylla_impl.tree import build_tree

    _, draft, _, root, logprobs, out, _ = setup

    def run():
        with torch.no_grad():
            return build_tree(draft, logprobs, out, root, TOP_K, DEPTH, TOTAL)

    tree = benchmark(run)
    assert tree.size == TOTAL


def test_verify_step(benchmark, setup):
    target, _, cache, _, _, _, tree = setup

    verdict = benchmark(_verify_and_rollback, target, cache, tree)
    assert int(verdict.path_len[0]) >= 1


def test_decode_step(benchmark, setup):
    """Draft the tree, verify it with the target, pick the accepted path: one speculative step."""
    from scylla_impl.tree import build_tree
    from scylla_impl.verify import verify

    target, draft, cache, root, logprobs, out, _ = setup

    def run():
        with torch.no_grad():
            tree = build_tree(draft, logprobs, out, root, TOP_K, DEPTH, TOTAL)
            scored = target.forward_tree(cache, tree.tokens, tree.depths, tree.mask)
            verdict = verify(tree, scored.logits)
        target.rollback(cache)
        return verdict

    benchmark(run)


def test_ar_step(benchmark, setup):
    """The baseline's step: one token forward and its argmax."""
    from scylla_impl.tree import Tree

    target, _, cache, root, _, _, _ = setup
    tree = Tree.root_only(root)
    benchmark(_verify_and_rollback, target, cache, tree)
