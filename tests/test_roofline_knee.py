"""The verify knee against the real embedded target (fp32: the exactness path on CPU)."""

import time

import pytest
import torch

from roofline import knee as knee_mod
from roofline.timing import Timer
from scylla_impl.target import Target

PREFIX = 24  # a short real chat prefix keeps these tests to seconds


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These tests check structure, not speed. On a shared 2-core machine two OpenMP threads
    # stall at every barrier whenever another process holds a core; one thread does not.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def target(default_model_dir):
    return Target.load(str(default_model_dir), dtype="float32", device="cpu")


def test_chat_prefix_is_a_real_templated_prompt(target):
    ids = knee_mod.chat_prefix(target.tokenizer, 200)
    assert 190 <= len(ids) <= 200
    text = target.tokenizer.decode(ids)
    assert "speculative decoding" in text or "workshop" in text
    assert len(knee_mod.chat_prefix(target.tokenizer, PREFIX)) <= PREFIX


def test_replicated_cache_equals_prefilled_cache(target):
    prefix = knee_mod.chat_prefix(target.tokenizer, PREFIX)
    one = target.new_cache(1)
    target.prefill(one, [prefix])
    replicated = target.new_cache(3, capacity=PREFIX + 16)
    replicated.repeat_row(one)
    prefilled = target.new_cache(3)
    target.prefill(prefilled, [prefix] * 3)
    tokens, depths, mask = knee_mod.chain_inputs(3, 4, target.info.vocab_size, "cpu")
    a = target.forward_tree(replicated, tokens, depths, mask)
    b = target.forward_tree(prefilled, tokens, depths, mask)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)


def test_measure_knee_small_grid(target):
    grid = knee_mod.knee_grid((1, 2), (1, 4), 8)
    seen, rounds = [], []
    points, skipped = knee_mod.measure_knee(target, grid, prefix_tokens=PREFIX, timer=Timer("cpu", clock="wall"),
                                            warmup=0, reps=2, on_point=lambda b, n: seen.append((b, n)),
                                            on_round=lambda r, reps: rounds.append((r, reps)))
    assert not skipped and len(points) == len(grid) == len(seen) and rounds == [(2, 2)]
    # cheapest first: in order of tokens in flight, so a budget cut keeps every batch size
    assert [(p.batch_size, p.tree_tokens) for p in points] == [(1, 1), (2, 1), (1, 4), (2, 4)]
    assert {p.batch_size: p.cache_source for p in points} == {1: "prefill", 2: "replicated"}
    assert all(len(p.timing.samples_s) == 2 and p.seconds > 0 for p in points)
    rows = [r for p in points for r in p.rows()]
    assert len(rows) == 2 * len(grid) and {"seconds", "tokens_in_flight", "prefill_s"} <= set(rows[0])
    fit = knee_mod.fit_knee((p.batch_size, p.tree_tokens, p.seconds) for p in points)
    assert fit.measured_range == (1, 8) and 1 <= fit.knee_tokens <= 8 and fit.points == 4


def test_measure_knee_deadline_skips_what_would_overrun(target):
    grid = knee_mod.knee_grid((1, 2), (1, 2), 4)
    points, skipped = knee_mod.measure_knee(target, grid, prefix_tokens=PREFIX, timer=Timer("cpu", clock="wall"),
                                            warmup=0, reps=1, deadline=time.perf_counter() - 1)
    assert points == [] and skipped == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_verify_cost_arithmetic(target):
    stats = knee_mod.ModelStats.of(target)
    cfg = target.model.config
    assert stats.num_layers == cfg.num_hidden_layers
    assert stats.element_bytes == 4
    # the LM head is an nn.Linear even when tied to the embedding, so it counts as compute
    assert stats.linear_params >= cfg.vocab_size * cfg.hidden_size
    f1, b1 = knee_mod.verify_cost(stats, 1, 1, 200)
    f2, b2 = knee_mod.verify_cost(stats, 2, 1, 200)
    assert f2 == pytest.approx(2 * f1)  # flops scale with tokens
    assert b2 - b1 == pytest.approx(2 * stats.num_layers * stats.kv_dim * 4 * 201)  # one more row's KV
    assert b1 > stats.weight_bytes
