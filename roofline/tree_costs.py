"""What a speculative step costs besides the target's verify forward, measured on the real draft.

- Draft level L(b, w): one `draft.expand` over w tokens per row of b rows, on a draft cache
  holding a real chat prefix (the knee's), rolled back between repetitions.
- Draft path P(b, w): one `draft.extend` over a step's accepted path, w tokens per row (a decode
  feeds the tree's depth + 1, padded), committed as a decode commits it.
- Step overhead o(b, D): a short `generate` at batch size b, per step, less the verify forward
  as it ran and the draft's forwards as priced (P and D - 1 levels of L): tree selection,
  acceptance, the cache commit and the loop's own time between steps. AR once, and trees of
  depth 1 and 3 (the work per level besides its forward); other depths are interpolated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from roofline.knee import PREFIX_TOKENS, chat_prefix
from roofline.latency_curve import LatencyCurve
from roofline.timing import Timer
from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig

LEVEL_WIDTHS = (1, 2, 3, 4, 6, 8, 10)
PATH_WIDTHS = (2, 3, 4, 6, 9)  # depth + 1 for trees of depth 1-8
# (top_k, depth, total_tokens) of the overhead probes: a depth-1 tree, as auto mostly picks
# (one probe at depth 3 over-priced depth 1's overhead by 0.6 ms a step), and a deeper one.
OVERHEAD_TREES = ((2, 1, 3), (2, 3, 4))
OVERHEAD_STEPS = 8


@dataclass(frozen=True)
class DraftCosts:
    level: LatencyCurve  # L(b, w)
    path: LatencyCurve  # P(b, w)
    overhead_ar_s: dict[int, float]  # o_ar(b)
    overhead_spec_s: dict[int, dict[int, float]]  # b -> {probe depth D: o_spec(b, D)}

    def spec_overhead(self, batch_size: int, depth: int) -> float:
        """o_spec at the nearest batch size measured, linear in depth between (and past) the probes'."""
        per_depth = self.overhead_spec_s[_nearest(self.overhead_spec_s, batch_size)]
        ordered = sorted(per_depth.items())
        (d0, o0), (d1, o1) = ordered[0], ordered[-1]
        slope = (o1 - o0) / (d1 - d0) if d1 != d0 else 0.0
        return max(0.0, o0 + slope * (depth - d0))

    def ar_overhead(self, batch_size: int) -> float:
        return self.overhead_ar_s[_nearest(self.overhead_ar_s, batch_size)]

    def to_json(self) -> dict:
        return {"level": self.level.to_json(), "path": self.path.to_json(),
                "overhead_ar_s": {str(b): s for b, s in self.overhead_ar_s.items()},
                "overhead_spec_s": {str(b): {str(d): s for d, s in per.items()} for b, per in self.overhead_spec_s.items()}}

    @classmethod
    def from_json(cls, doc: dict) -> DraftCosts:
        return cls(LatencyCurve.from_json(doc["level"]), LatencyCurve.from_json(doc["path"]),
                   {int(b): float(s) for b, s in doc["overhead_ar_s"].items()},
                   {int(b): {int(d): float(s) for d, s in per.items()} for b, per in doc["overhead_spec_s"].items()})


def _nearest(measured: dict[int, object], b: int) -> int:
    return min(measured, key=lambda m: abs(m - b))


@torch.inference_mode()  # as decode.generate runs
def measure(target, draft, batch_sizes: Sequence[int], *, prefix_tokens: int = PREFIX_TOKENS,
            reps: int = 5, on_batch: Callable[[int], None] | None = None) -> DraftCosts:
    """L, P and o of `draft` beside `target` at `batch_sizes`, over a cache of `prefix_tokens`."""
    timer = Timer(target.device)
    prefix = chat_prefix(target.tokenizer, prefix_tokens)
    layers = tuple(draft.feature_layers)
    cache = target.new_cache(1, len(prefix) + 8)
    out = target.prefill(cache, [prefix], layers)
    feats = out.layer_inputs if layers else out.hidden  # [1, L, f]
    levels, paths, over_ar, over_spec = [], [], {}, {}
    for b in sorted(set(batch_sizes)):
        levels += level_samples(draft, prefix, feats, b, LEVEL_WIDTHS, timer, reps)
        paths += path_samples(draft, prefix, feats, b, PATH_WIDTHS, timer, reps)
    level, path = LatencyCurve.from_points(levels), LatencyCurve.from_points(paths)
    for b in sorted(set(batch_sizes)):
        over_ar[b] = _overhead(target, None, [prefix] * b, None)
        over_spec[b] = {depth: _overhead(target, draft, [prefix] * b, (top_k, depth, total))
                        - path.seconds(b, depth + 1) - (depth - 1) * level.seconds(b, top_k)
                        for top_k, depth, total in OVERHEAD_TREES}
        if on_batch is not None:
            on_batch(b)
    return DraftCosts(level, path, over_ar, over_spec)


def _start(draft, prefix, feats, b: int, room: int) -> torch.Tensor:
    """A draft cache of b rows holding `prefix` with the target's features `feats` [1, n, f];
    returns the draft's output at its last position [b, h]."""
    device = feats.device
    n = len(prefix)
    draft.start([prefix] * b, n + room)
    pair_tokens = torch.tensor([prefix[1:] + [prefix[-1]]] * b, device=device)  # [b, n]
    _, out = draft.extend(pair_tokens, feats.expand(b, -1, -1), torch.full((b,), n, device=device))
    return out


def level_samples(draft, prefix, feats, b: int, widths, timer: Timer, reps: int) -> list[tuple[int, int, float]]:
    """(b, w, seconds) of one `draft.expand` of w tokens per row, `reps` times per width, on a
    draft cache holding `prefix` with the target's features `feats` [1, len(prefix), f]."""
    device = feats.device
    out = _start(draft, prefix, feats, b, max(widths) + 8)
    tokens_all = torch.tensor([prefix[:max(widths)]] * b, device=device)  # [b, W]: real token ids
    samples = []
    for w in widths:
        tokens = tokens_all[:, :w]  # fed as one tree level
        hidden = out[:, None, :].expand(b, w, out.shape[-1])  # [b, w, h]
        depths = torch.zeros(b, w, dtype=torch.long, device=device)
        mask = torch.eye(w, dtype=torch.bool, device=device).expand(b, w, w)
        timing = timer.measure(lambda t=tokens, h=hidden, d=depths, m=mask: draft.expand(t, h, d, m),
                               warmup=1, reps=reps, before=draft.rollback)
        draft.rollback()
        samples += [(b, w, s) for s in timing.samples_s]
    return samples


def path_samples(draft, prefix, feats, b: int, widths, timer: Timer, reps: int) -> list[tuple[int, int, float]]:
    """(b, w, seconds) of one `draft.extend` of w path tokens per row, `reps` times per width.
    A commit cannot be undone, so each call adds its w positions after the last: a few dozen on
    a prefix of hundreds, as a decode's cache grows step by step."""
    device = feats.device
    _start(draft, prefix, feats, b, (reps + 1) * sum(widths) + 8)
    tokens_all = torch.tensor([prefix[:max(widths)]] * b, device=device)  # [b, W]
    feats_all = feats[:, -max(widths):].expand(b, -1, -1)  # [b, W, f]
    samples = []
    for w in widths:
        counts = torch.full((b,), w, device=device)
        timing = timer.measure(lambda w=w, c=counts: draft.extend(tokens_all[:, :w], feats_all[:, :w], c),
                               warmup=1, reps=reps)
        samples += [(b, w, s) for s in timing.samples_s]
    return samples


def _overhead(target, draft, prompts, tree: tuple[int, int, int] | None) -> float:
    """Median seconds per step outside the verify forward (and, with a draft, its forwards as they ran)."""
    k, d, n = tree or (1, 1, 1)
    config = DecodeConfig(top_k=k, depth=d, total_tokens=n, max_new_tokens=OVERHEAD_STEPS + 1)
    generate(target, prompts, draft, config)  # warm-up
    stats = generate(target, prompts, draft, config).stats
    rest = stats.step_s - stats.phase_s["verify"]
    return float(np.median(rest)) if rest.size else 0.0
