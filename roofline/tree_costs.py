"""What a speculative step costs besides the target's verify forward, measured on the real draft.

- Draft level L(b, w): one `draft.expand` over w tokens per row of b rows, on a draft cache
  holding a real chat prefix (the knee's), rolled back between repetitions.
- Step overhead o(b): a short `generate` at batch size b, per step, minus the phases priced
  elsewhere (the verify forward, the draft forwards); AR and a small tree separately. What
  remains is tree selection, acceptance and the cache commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from roofline.knee import PREFIX_TOKENS, chat_prefix
from roofline.latency_curve import LatencyCurve
from roofline.timing import Timer
from scylla_impl.decode import DecodeConfig, generate

LEVEL_WIDTHS = (1, 2, 3, 4, 6, 8, 10)
OVERHEAD_TREE = (2, 3, 4)  # (top_k, depth, total_tokens) of the overhead probe
OVERHEAD_STEPS = 8


@dataclass(frozen=True)
class DraftCosts:
    level: LatencyCurve  # L(b, w)
    overhead_ar_s: dict[int, float]  # o_ar(b)
    overhead_spec_s: dict[int, float]  # o_spec(b)

    def to_json(self) -> dict:
        return {"level": self.level.to_json(),
                "overhead_ar_s": {str(b): s for b, s in self.overhead_ar_s.items()},
                "overhead_spec_s": {str(b): s for b, s in self.overhead_spec_s.items()}}

    @classmethod
    def from_json(cls, doc: dict) -> DraftCosts:
        return cls(LatencyCurve.from_json(doc["level"]),
                   {int(b): float(s) for b, s in doc["overhead_ar_s"].items()},
                   {int(b): float(s) for b, s in doc["overhead_spec_s"].items()})


@torch.no_grad()
def measure(target, draft, batch_sizes: Sequence[int], *, prefix_tokens: int = PREFIX_TOKENS, widths=LEVEL_WIDTHS,
            reps: int = 5, on_batch: Callable[[int], None] | None = None) -> DraftCosts:
    timer = Timer(target.device)
    prefix = chat_prefix(target.tokenizer, prefix_tokens)
    layers = tuple(draft.feature_layers)
    cache = target.new_cache(1, len(prefix) + 8)
    out = target.prefill(cache, [prefix], layers)
    feats = out.layer_inputs if layers else out.hidden  # [1, L, f]
    samples, over_ar, over_spec = [], {}, {}
    for b in sorted(set(batch_sizes)):
        samples += level_samples(draft, prefix, feats, b, widths, timer, reps)
        over_ar[b] = _overhead(target, None, [prefix] * b)
        over_spec[b] = _overhead(target, draft, [prefix] * b)
        if on_batch is not None:
            on_batch(b)
    return DraftCosts(LatencyCurve.from_points(samples), over_ar, over_spec)


def level_samples(draft, prefix, feats, b: int, widths, timer: Timer, reps: int) -> list[tuple[int, int, float]]:
    """(b, w, seconds) of one `draft.expand` of w tokens per row, `reps` times per width, on a
    draft cache holding `prefix` with the target's features `feats` [1, len(prefix), f]."""
    device = feats.device
    n = len(prefix)
    draft.start([prefix] * b, n + max(widths) + 8)
    pair_tokens = torch.tensor([prefix[1:] + [prefix[-1]]] * b, device=device)
    _, out = draft.extend(pair_tokens, feats.expand(b, -1, -1), torch.full((b,), n, device=device))
    samples = []
    for w in widths:
        tokens = pair_tokens[:, :w]  # real token ids, fed as one tree level
        hidden = out[:, None, :].expand(b, w, out.shape[-1])
        depths = torch.zeros(b, w, dtype=torch.long, device=device)
        mask = torch.eye(w, dtype=torch.bool, device=device).expand(b, w, w)
        timing = timer.measure(lambda t=tokens, h=hidden, d=depths, m=mask: draft.expand(t, h, d, m),
                               warmup=1, reps=reps, before=draft.rollback)
        draft.rollback()
        samples += [(b, w, s) for s in timing.samples_s]
    return samples


def _overhead(target, draft, prompts) -> float:
    """Median seconds per step outside the verify forward and the draft forwards."""
    k, d, n = OVERHEAD_TREE
    config = DecodeConfig(top_k=k, depth=d, total_tokens=n, max_new_tokens=OVERHEAD_STEPS + 1)
    generate(target, prompts, draft, config)  # warm-up
    stats = generate(target, prompts, draft, config).stats
    rest = stats.step_s - stats.phase_s["verify"] - stats.phase_s["draft"]
    return float(np.median(rest)) if rest.size else 0.0
