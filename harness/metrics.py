"""Raw per-step counters -> the metric columns of one results row.

Inputs are the engine's `DecodeStats`, one per `generate` call (a batch of one turn):
`drafted`, `accepted`, `emitted`, `active` as [steps, rows] arrays, `phase_s` (phase ->
[steps] seconds), `step_s` [steps], `prefill_s`, `decode_s`. Everything is summed over
calls first and only then turned into ratios (as vLLM does), so a cell's tau is the
ratio of its totals, never a mean of per-batch ratios.

Definitions (ARCHITECTURE.md, "Metrics"):
- a verify step is one (step, row) pair where the row was still active;
- emitted tokens are the tokens that count (a+1, cut at EOS / max_new_tokens); the token
  emitted by prefill is not a decode-loop token and counts in neither tau nor tokens/s;
- tau = emitted / verify steps; tau_request_mean = mean over requests of the same ratio;
- accepted at position k iff accepted >= k (acceptance is a prefix of a path);
  unconditional alpha_k = A_k / steps, conditional alpha_k = A_k / A_{k-1} with A_0 = steps;
- tokens/s = emitted / decode-loop wall time (prefill timed separately).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.storage import Reference
from scylla_impl.decode import PHASES, DecodeStats


def _ratio(num: float, den: float) -> float | None:
    if den == 0:
        return None
    return float(num) / float(den)


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def _p90(values: np.ndarray) -> float | None:
    return float(np.percentile(values, 90)) if values.size else None


def acceptance(accepted: np.ndarray, active: np.ndarray, depth: int) -> tuple[list[float | None], list[float | None]]:
    """Per-position (conditional, unconditional) acceptance for positions 1..depth."""
    acc = accepted[active]
    steps = int(acc.size)
    counts = [steps] + [int((acc >= k).sum()) for k in range(1, depth + 1)]
    cond = [_ratio(counts[k], counts[k - 1]) for k in range(1, depth + 1)]
    uncond = [_ratio(counts[k], steps) for k in range(1, depth + 1)]
    return cond, uncond


def summarize(stats: Iterable[DecodeStats], depth: int | None) -> dict[str, Any]:
    """Metric columns of one cell from its calls' stats. `depth` None (AR): no acceptance lists."""
    stats = list(stats)
    drafted, accepted, emitted, active = [], [], [], []
    step_s: list[np.ndarray] = []
    phase: dict[str, list[np.ndarray]] = {p: [] for p in PHASES}
    prefill_s = decode_s = 0.0
    batch_steps = 0
    per_request: list[tuple[int, int]] = []  # (emitted, steps) per request
    for s in stats:
        act, em, dr, ac = s.active, s.emitted, s.drafted, s.accepted  # [steps, rows] each
        drafted.append(dr[act])
        accepted.append(ac[act])
        emitted.append(em[act])
        active.append(act)
        batch_steps += int(act.shape[0])
        for r in range(act.shape[1]):
            per_request.append((int(em[:, r][act[:, r]].sum()), int(act[:, r].sum())))
        step_s.append(s.step_s)
        for p in PHASES:
            phase[p].append(s.phase_s[p])
        prefill_s += float(s.prefill_s)
        decode_s += float(s.decode_s)

    def cat(xs: list[np.ndarray], dtype=np.int64) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, dtype=dtype)

    em_all, ac_all, dr_all = cat(emitted), cat(accepted), cat(drafted)
    steps = int(em_all.size)
    emitted_tokens = int(em_all.sum())
    req_taus = [e / n for e, n in per_request if n > 0]
    out: dict[str, Any] = {
        "emitted_tokens": emitted_tokens,
        "verify_steps": steps,
        "batch_steps": batch_steps,
        "drafted_nodes": int(dr_all.sum()),
        "accepted_tokens": int(ac_all.sum()),
        "tau": _ratio(emitted_tokens, steps),
        "tau_request_mean": float(np.mean(req_taus)) if req_taus else None,
        "accept_cond": None,
        "accept_uncond": None,
        "tokens_per_s": _ratio(emitted_tokens, decode_s) if decode_s > 0 else None,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
    }
    if depth is not None:
        ones = np.ones(ac_all.shape, dtype=bool)
        out["accept_cond"], out["accept_uncond"] = acceptance(ac_all, ones, depth)
    all_steps = cat(step_s, float)
    out["step_time_median_s"] = _median(all_steps)
    out["step_time_p90_s"] = _p90(all_steps)
    for p in PHASES:
        out[f"{p}_time_median_s"] = _median(cat(phase[p], float))
    return out


def speedup(tokens_per_s: float | None, ar_tokens_per_s: float | None) -> float | None:
    if tokens_per_s is None or not ar_tokens_per_s or math.isnan(ar_tokens_per_s):
        return None
    return float(tokens_per_s) / float(ar_tokens_per_s)


@dataclass(frozen=True)
class LosslessCheck:
    """A speculative cell's outputs against its AR partner's at T=0.

    A request that parts from AR at a token where the speculative side took one of AR's rivals
    there (a token whose logit was within rounding of AR's choice: scylla_impl/decode.py,
    NEAR_TIE_ULPS) is a near-tie; any other difference (a token that was no rival, a missing
    request, one output a prefix of the other) is a mismatch. Lossless means no mismatch.
    """

    mismatches: int
    near_ties: int

    @property
    def lossless(self) -> bool:
        return self.mismatches == 0


def compare_outputs(spec_outputs: dict[Any, Sequence[int]], ar_outputs: dict[Any, Reference]) -> LosslessCheck:
    """Keys are request identities (prompt id, turn). A request missing on either side counts
    as a mismatch: a check that silently compares fewer requests would pass too easily."""
    mismatches = near_ties = 0
    for key in set(spec_outputs) | set(ar_outputs):
        mine, ref = spec_outputs.get(key), ar_outputs.get(key)
        if mine is not None and ref is not None and list(mine) == list(ref.token_ids):
            continue
        if mine is not None and ref is not None and _parts_at_near_tie(list(mine), ref):
            near_ties += 1
        else:
            mismatches += 1
    return LosslessCheck(mismatches, near_ties)


def _parts_at_near_tie(mine: list[int], ref: Reference) -> bool:
    k = next((i for i, (a, b) in enumerate(zip(mine, ref.token_ids)) if a != b), None)
    if k is None or ref.rivals is None or k >= len(ref.rivals):
        return False
    return mine[k] in ref.rivals[k]


def median_or_none(values: Sequence[float] | None) -> float | None:
    vals = [float(v) for v in (values or []) if v is not None and not math.isnan(float(v))]
    return float(np.median(vals)) if vals else None
