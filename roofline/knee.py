"""The verify knee: how many tokens one target forward can verify before it stops being free.

Measurement. With the real target (the engine's adapter) and a real cached prefix (a chat
prompt from the target's own tokenizer, `prefix_tokens` long), time one verify forward
over b rows x n tree tokens, then roll the cache back to the prefix. The tree is a chain
(lower-triangular ancestor mask): a dense-attention forward costs the same for any tree
shape of n nodes, and a chain is the one shape valid at every n. Timed on the wall clock
with a device synchronise, since a verify step's host overhead is part of its cost.

Model. Time per step as a function of tokens in flight x = b*n:

    T(b, n) = t0 + t_row * b + s * max(0, b*n - K)

flat in x up to the knee K (weights and launch overhead dominate; extra tokens ride along
for free), then linear (compute-bound). t_row absorbs what grows with rows whatever n is
(each row's KV-cache reads). Fitted by least squares on relative error, all coefficients
non-negative, K searched over the measured range. The knee is K: "the largest tokens in
flight before time leaves its flat region". A K at the end of the measured range is
reported as censored (the true knee lies beyond what was measured).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from roofline.timing import Timer, Timing

# A long, ordinary user request: the prefix must be real text through the real chat template.
# Tokens of the cached chat prefix every step timing runs over: the profile's knee, a
# draft's level costs, `generate --top-k auto`.
PREFIX_TOKENS = 200
PREFIX_TEXT = (
    "I am preparing a short workshop for new engineers about how large language models "
    "generate text. Please explain, step by step and in plain language, what happens "
    "between the moment a user sends a prompt and the moment the first answer token "
    "appears: tokenisation, the embedding lookup, the attention layers and the key-value "
    "cache, the final projection onto the vocabulary, and how sampling with a temperature "
    "picks the next token. Then explain why generating each further token is usually "
    "limited by memory bandwidth rather than arithmetic, and how speculative decoding "
    "with a small draft model and a tree of candidate tokens can verify several tokens in "
    "one forward pass of the large model. Finish with three practical tips for measuring "
    "decoding speed fairly on shared hardware, and a short list of common mistakes that "
    "make benchmark numbers misleading, such as forgetting to synchronise the device, "
    "timing the first call, or comparing runs made under different system load. Keep "
    "the explanation concrete, use one small worked example with actual numbers, and avoid "
    "jargon where a simpler word will do, because the audience has no machine learning background."
)


# -- the grid -----------------------------------------------------------------------------


def knee_grid(batches: Iterable[int], tokens: Iterable[int], max_in_flight: int) -> list[tuple[int, int]]:
    """(b, n) pairs with b*n <= max_in_flight, ordered by b then n."""
    return [(b, n) for b in sorted(set(batches)) for n in sorted(set(tokens)) if b * n <= max_in_flight]


def chat_prefix(tokenizer, length: int) -> list[int]:
    """A real chat prompt of at most `length` tokens, as close as whole words allow.

    The user text is cut at a word boundary so the chat template stays intact."""
    words = PREFIX_TEXT.split()
    messages = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    try:
        encode = lambda text: list(tokenizer.apply_chat_template(  # noqa: E731
            messages(text), add_generation_prompt=True, tokenize=True, return_dict=False))
        encode("hi")
    except Exception:  # a tokenizer without a chat template: plain text is still real text
        encode = lambda text: tokenizer.encode(text)  # noqa: E731
    text = " ".join(words)
    while len(encode(text)) < length:  # repeat the request until it is long enough
        text = text + " " + " ".join(words)
    # Binary search the longest word prefix whose templated form fits.
    all_words = text.split()
    lo, hi = 1, len(all_words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(" ".join(all_words[:mid]))) <= length:
            lo = mid
        else:
            hi = mid - 1
    return encode(" ".join(all_words[:lo]))[:length]


# -- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KneePoint:
    batch_size: int
    tree_tokens: int  # n: tokens per row verified in one forward (root included)
    prefix_tokens: int
    timing: Timing
    prefill_s: float  # the prefix's prefill, for the record (not part of the step)
    cache_source: str = "prefill"  # "prefill", or "replicated" from the one-row cache

    @property
    def tokens_in_flight(self) -> int:
        return self.batch_size * self.tree_tokens

    @property
    def seconds(self) -> float:
        return self.timing.median_s

    def rows(self) -> list[dict]:
        base = {"batch_size": self.batch_size, "tree_tokens": self.tree_tokens,
                "tokens_in_flight": self.tokens_in_flight, "prefix_tokens": self.prefix_tokens,
                "prefill_s": self.prefill_s, "cache_source": self.cache_source, "clock": self.timing.clock, "warmup": self.timing.warmup}
        return [{**base, "rep": i, "seconds": s} for i, s in enumerate(self.timing.samples_s)]


def chain_inputs(batch_size: int, n: int, vocab: int, device, seed: int = 0):
    """tokens [b, n] (random ids), depths [b, n] = 0..n-1, mask [b, n, n] lower-triangular."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1000 * batch_size + n)
    tokens = torch.randint(0, vocab, (batch_size, n), generator=gen).to(device)
    depths = torch.arange(n).expand(batch_size, n).to(device)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool)).expand(batch_size, n, n).to(device)
    return tokens, depths, mask


@torch.inference_mode()  # as decode.generate runs
def measure_knee(
    target,
    grid: list[tuple[int, int]],
    *,
    prefix_tokens: int,
    timer: Timer,
    warmup: int = 1,
    reps: int = 3,
    deadline: float | None = None,
    on_point: Callable[[int, int], None] | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> tuple[list[KneePoint], list[tuple[int, int]]]:
    """Time `target.forward_tree` at every (b, n) of the grid; return (points, skipped).

    The prefix is prefilled once into a one-row cache; every batch size gets copies of it.
    Repetitions run in rounds over the whole grid, not back to back per point: on a shared
    machine a slow spell then lands on one sample of many points, which the medians drop,
    instead of on every sample of a few points, which would bend the curve the tree policy
    prices with. The first round goes in order of tokens in flight, so the cheap end of the
    grid (every batch size at small n) comes first. With a `deadline` (a
    `time.perf_counter()` value), a point whose predicted cost would overrun it is skipped
    along with everything after it, and later rounds stop when the next would overrun it.
    """
    prefix = chat_prefix(target.tokenizer, prefix_tokens)
    capacity = len(prefix) + max(n for _, n in grid) + 8  # room for the largest tree in every cache
    source = target.new_cache(1, capacity)
    prefill_s = timer.once(lambda: target.prefill(source, [list(prefix)]))
    caches = {1: source}  # batch size -> a cache holding the prefix in every row
    order = sorted(grid, key=lambda bn: (bn[0] * bn[1], bn[0]))
    calls, samples = [], []  # per measured point: its timed call, its samples
    last: tuple[int, float] | None = None  # (tokens in flight, seconds) of the latest point
    skipped: list[tuple[int, int]] = []
    for i, (b, n) in enumerate(order):
        if deadline is not None:
            # Cost of the next point if time grew linearly in tokens from the last one:
            # an upper bound in the flat region, exact past the knee.
            per_call = last[1] * max(1.0, b * n / last[0]) if last else 0.0
            if time.perf_counter() + (warmup + 1) * per_call > deadline:
                skipped = order[i:]
                break
        if b not in caches:
            # Copies of the one-row cache: the same keys, values and lengths as b prefills,
            # which on a CPU would dominate the whole grid.
            caches[b] = target.new_cache(b, capacity)
            caches[b].repeat_row(source)
        cache = caches[b]
        tokens, depths, mask = chain_inputs(b, n, target.info.vocab_size, target.device)
        call = lambda cache=cache, tokens=tokens, depths=depths, mask=mask: target.forward_tree(cache, tokens, depths, mask)  # noqa: E731
        calls.append((b, n, call, lambda cache=cache: target.rollback(cache)))
        samples.append(list(timer.measure(call, warmup=warmup, reps=1, before=calls[-1][3]).samples_s))
        target.rollback(cache)
        last = (b * n, samples[-1][0])
        if on_point is not None:
            on_point(b, n)
    round_s = sum(s[0] for s in samples)
    for r in range(2, reps + 1):
        if deadline is not None and time.perf_counter() + round_s > deadline:
            break
        for (_, _, call, rollback), got in zip(calls, samples):
            got += timer.measure(call, warmup=0, reps=1, before=rollback).samples_s
            rollback()
        if on_round is not None:
            on_round(r, reps)
    points = []
    for (b, n, _, _), got in zip(calls, samples):
        cache_source = "prefill" if b == 1 else "replicated"
        point = KneePoint(b, n, len(prefix), Timing(tuple(got), warmup, timer.clock_name), prefill_s, cache_source)
        points.append(point)
    return points, skipped


# -- the fit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KneeFit:
    knee_tokens: float  # K
    t0_s: float
    per_row_s: float  # t_row
    per_token_s: float  # s, slope past the knee
    rel_rmse: float  # root-mean-square relative residual
    censored: str | None  # None, "above" (K >= largest measured b*n) or "below" (K <= smallest)
    points: int
    measured_range: tuple[int, int]  # smallest and largest b*n measured

    def predict(self, batch_size: int, tree_tokens: int) -> float:
        x = batch_size * tree_tokens
        return self.t0_s + self.per_row_s * batch_size + self.per_token_s * max(0.0, x - self.knee_tokens)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["measured_range"] = list(self.measured_range)
        doc["model"] = "T(b,n) = t0 + per_row*b + per_token*max(0, b*n - knee_tokens)"
        return doc


def _nonneg_lstsq(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares with every coefficient >= 0, exact for a handful of columns.

    Tries each subset of active columns (2^3 = 8 for this model) and keeps the best feasible
    solution: the NNLS optimum is the unconstrained optimum of one of these subsets.
    """
    cols = a.shape[1]
    best_coef, best_sse = np.zeros(cols), float(np.sum(y**2))
    for r in range(1, cols + 1):
        for subset in itertools.combinations(range(cols), r):
            coef_s, *_ = np.linalg.lstsq(a[:, subset], y, rcond=None)
            if np.any(coef_s < 0):
                continue
            coef = np.zeros(cols)
            coef[list(subset)] = coef_s
            sse = float(np.sum((a @ coef - y) ** 2))
            if sse < best_sse - 1e-15:
                best_coef, best_sse = coef, sse
    return best_coef, best_sse


def fit_knee(samples: Iterable[tuple[int, int, float]]) -> KneeFit:
    """Fit T(b, n) to (batch_size, tree_tokens, seconds) samples; see the module docstring."""
    data = np.array([(b, n, t) for b, n, t in samples], dtype=float)
    if len(data) < 3:
        raise ValueError(f"a knee fit needs at least 3 points, got {len(data)}")
    bs, xs, ts = data[:, 0], data[:, 0] * data[:, 1], data[:, 2]
    lo, hi = float(xs.min()), float(xs.max())
    # Candidate knees: every measured b*n plus a fine geometric grid between them, so K
    # can sit between grid points (the intersection of the flat and the sloped line).
    candidates = sorted(set(xs.tolist()) | set(np.geomspace(lo, hi, 96).tolist()))
    weights = 1.0 / ts  # relative residuals: a 10% miss weighs the same at 1 ms and 1 s
    y = np.ones_like(ts)
    best = None
    for k in candidates:
        a = np.stack([np.ones_like(xs), bs, np.maximum(0.0, xs - k)], axis=1) * weights[:, None]
        coef, sse = _nonneg_lstsq(a, y)
        # Prefer the larger knee on (numerical) ties: the flat region extends as far as
        # the data allows.
        if best is None or sse < best[2] * (1 - 1e-9) or (sse <= best[2] * (1 + 1e-9) and k > best[0]):
            best = (k, coef, sse)
    k, coef, sse = best
    t0, per_row, slope = (float(c) for c in coef)
    if slope <= 0.0:  # nothing ever left the flat region within the grid
        k, censored = hi, "above"
    elif k >= hi:
        censored = "above"
    elif k <= lo:
        censored = "below"
    else:
        censored = None
    return KneeFit(
        knee_tokens=float(k), t0_s=t0, per_row_s=per_row, per_token_s=slope,
        rel_rmse=math.sqrt(sse / len(ts)), censored=censored, points=len(ts),
        measured_range=(int(lo), int(hi)),
    )


# -- what a verify step costs, for the roofline figure ------------------------------------------


@dataclass(frozen=True)
class ModelStats:
    """Sizes that set a verify forward's FLOPs and bytes."""

    linear_params: int  # weights of every nn.Linear, LM head included (2 FLOPs each per token)
    weight_bytes: int  # unique parameter bytes read once per forward
    num_layers: int
    q_dim: int  # heads x head_dim
    kv_dim: int  # kv_heads x head_dim
    element_bytes: int

    @classmethod
    def of(cls, target) -> ModelStats:
        """What a decode step of `target` (scylla_impl.target.Target) reads: its decoder stack and
        LM head. A multimodal model's vision tower is never read by a step, so it is left out."""
        cfg = target.model.config.get_text_config()
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        parts = (target.decoder, target.lm_head)
        unique = {p.data_ptr(): p for part in parts for p in part.parameters()}.values()  # tied weights once
        linear = sum(m.weight.numel() for part in parts for m in part.modules() if isinstance(m, torch.nn.Linear))
        return cls(
            linear_params=linear,
            weight_bytes=sum(p.numel() * p.element_size() for p in unique),
            num_layers=cfg.num_hidden_layers,
            q_dim=heads * head_dim,
            kv_dim=kv_heads * head_dim,
            element_bytes=next(target.lm_head.parameters()).element_size(),
        )


def verify_cost(stats: ModelStats, batch_size: int, tree_tokens: int, prefix_tokens: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one verify forward — an estimate for plotting, not a measurement.

    FLOPs: 2 per linear weight per token, plus attention (QK^T and PV: 4*q_dim per key)
    over prefix + tree keys. Bytes: the weights once, plus every row's K and V read.
    """
    q = batch_size * tree_tokens
    keys = prefix_tokens + tree_tokens
    flops = 2.0 * stats.linear_params * q + 4.0 * stats.num_layers * stats.q_dim * q * keys
    kv = 2.0 * stats.num_layers * stats.kv_dim * stats.element_bytes * batch_size * keys
    return flops, stats.weight_bytes + kv
