"""The tie rule for fixed top_k, and the draft-free knee rule the profile reports.

Sweeps' `top_k auto` does not use the knee rule: it prices every tree with the draft's measured
acceptance and the whole verify latency curve (tree_policy.py). What lives here:

The tie between top_k and total_tokens (`total_tokens_for`, the one place it is defined),
used by every fixed top_k unless --total-tokens is given: an EAGLE-2 tree of top-k k and
depth D draws its nodes from a pool of k + (D-1)k^2 candidates, and keeps a fixed share of
that pool as it widens. We anchor the share on EAGLE-2's defaults (top_k=10 ->
total_tokens=60, so 0.6 k^2), never below one full-depth chain (D+1 tokens, root included)
and never above the whole pool plus the root:

    total_tokens(k, D) = min(k + (D-1)k^2 + 1, max(D + 1, round(0.6 k^2)))

The knee rule (profile.json's `topk_policy`): the largest top_k with
b * total_tokens(k, depth) <= knee_tokens, a chain shortened to fit when not even top_k=1
does (never below one draft token; within_knee=False if it still exceeds the knee). It
needs no draft, so it is what a profile alone can say; a binary knee ignores how the cost
curve bends and what the draft accepts, which is why sweeps price trees instead.

    profile = load_profile("prof/")              # the folder `scylla profile --out` wrote
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from roofline.profile_doc import ProfileDoc, read_profile_doc
from scylla_impl.tree_shape import pool_size  # the pool is the engine's: k + (D-1)k^2
from workloads.errors import ScyllaError

# EAGLE-2's defaults: top_k=10 keeps total_tokens=60 -> 60 / 10^2.
TOKENS_PER_TOPK_SQUARED = 0.6
MAX_TOP_K = 32  # wider first levels stop paying off long before any knee we have measured
DEFAULT_DEPTH = 5
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def total_tokens_for(top_k: int, depth: int) -> int:
    """Tokens one row verifies per step (root included) for a top-k tree: the tie rule above."""
    if top_k < 1 or depth < 1:
        raise ValueError(f"top_k and depth must be >= 1 (got top_k={top_k}, depth={depth})")
    share = max(depth + 1, round(TOKENS_PER_TOPK_SQUARED * top_k * top_k))
    return min(pool_size(top_k, depth) + 1, share)


@dataclass(frozen=True)
class PolicyEntry:
    batch_size: int
    depth: int
    top_k: int
    total_tokens: int
    tokens_in_flight: int  # batch_size * total_tokens: what one verify forward scores
    within_knee: bool

    def to_json(self) -> dict:
        return asdict(self)


def policy_entry(knee_tokens: float, batch_size: int, depth: int = DEFAULT_DEPTH,
                 max_top_k: int = MAX_TOP_K) -> PolicyEntry:
    """Theorem 1.3 for one batch size: the largest top_k whose tree fits under the knee."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = knee_tokens / batch_size  # tokens per row the knee allows
    # total_tokens_for is non-decreasing in k, so the first fit from the top is the largest.
    for k in range(max_top_k, 0, -1):
        n = total_tokens_for(k, depth)
        if n <= budget:
            return PolicyEntry(batch_size, depth, k, n, batch_size * n, True)
    n = max(2, min(depth + 1, math.floor(budget)))  # a shortened chain, at least one draft token
    return PolicyEntry(batch_size, depth, 1, n, batch_size * n, batch_size * n <= knee_tokens)


def policy_table(knee_tokens: float, batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
                 depth: int = DEFAULT_DEPTH, max_top_k: int = MAX_TOP_K) -> list[PolicyEntry]:
    return [policy_entry(knee_tokens, b, depth, max_top_k) for b in batch_sizes]


# -- reading a profile ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSummary:
    """What the policy needs from a profile folder (the whole document is kept in `document`)."""

    path: Path
    knee_tokens: float
    device_name: str
    document: ProfileDoc

    @property
    def doc(self) -> dict[str, Any]:
        return self.document.doc

    @property
    def profile_id(self) -> str | None:
        return self.document.profile_id


def load_profile(directory: str | Path) -> ProfileSummary:
    """Read `DIR/profile.json`; a missing file or a profile without a measured knee is a ScyllaError."""
    profile = read_profile_doc(directory)
    if profile.knee_tokens is None:
        why = profile.why_unmeasured("knee")
        raise ScyllaError(f"{profile.file}: the profile has no verify knee, so top_k 'auto' cannot be used"
                          + (f" ({why})" if why else ""))
    return ProfileSummary(profile.folder, profile.knee_tokens, profile.device_name or "unknown", profile)
