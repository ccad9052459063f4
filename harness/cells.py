"""Spec -> cells: the product of the spec's lists, pruned with reasons, with AR partners.

A cell is one measurement: (target, method, draft, dataset, batch size, tree, temperature)
plus the settings shared by the whole sweep. Its `cell_id` is a stable hash of exactly the
parameters that change what is measured, so re-running the same sweep finds the same ids
(resume), and two sweeps that share a cell agree on its id.

Every (dataset, batch size, temperature) group gets one AR cell, placed first in the
group, so each speculative cell has a partner for speedup and the lossless check,
measured in the same run and close in time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from harness.spec import AUTO, TIED, SweepSpec
from roofline.policy import total_tokens_for
from roofline.tree_policy import NO_TREE, TreeChoice, chain_label
from scylla_impl.tree_shape import pool_size
from workloads.errors import ScyllaError
from workloads.long_prompts import REFUSE

PLANNED = "planned"
PRUNED = "pruned"

# (batch_size, draft, dataset, lookup chain) -> the tree top_k auto runs (harness/auto_trees.py);
# total_tokens 1 is no tree.
TreePolicy = Callable[[int, str, str, int], TreeChoice]


@dataclass(frozen=True)
class Cell:
    cell_id: str
    method: str
    draft: str | None
    dataset: str
    batch_size: int
    top_k: int | None
    top_k_setting: str | None
    depth: int | None
    total_tokens: int | None
    temperature: float
    # settings shared by the sweep, part of the identity
    target: str
    dtype: str
    device: str
    max_new_tokens: int
    prompts: int
    turns: str
    top_p: float
    seed: int
    system_prompt: str | None
    compile: bool = False
    long_prompts: str = REFUSE
    lookup_tokens: int = 0  # the prompt-lookup chain grafted under each tree (DecodeConfig.lookup_tokens)
    # planning outcome
    status: str = PLANNED
    reason: str | None = None
    ar_partner: str | None = None

    @property
    def is_ar(self) -> bool:
        return self.method == "ar"

    @property
    def group(self) -> tuple:
        """Cells that share an AR partner."""
        return (self.dataset, self.batch_size, self.temperature)

    def label(self) -> str:
        if self.is_ar:
            return f"ar {self.dataset} b={self.batch_size} T={self.temperature:g}"
        if self.total_tokens == 1:
            return f"{self.method} {self.dataset} b={self.batch_size} k=auto->{NO_TREE} T={self.temperature:g}"
        k = f"{self.top_k_setting}->{self.top_k}" if self.top_k_setting == AUTO else str(self.top_k)
        return (
            f"{self.method} {self.dataset} b={self.batch_size} k={k} d={self.depth} "
            f"n={self.total_tokens}{chain_label(self.lookup_tokens)} T={self.temperature:g}"
        )


IDENTITY = (
    "target", "method", "draft", "dataset", "batch_size", "top_k", "top_k_setting", "depth",
    "total_tokens", "temperature", "top_p", "max_new_tokens", "prompts", "turns", "seed",
    "system_prompt", "dtype", "device", "compile", "long_prompts", "lookup_tokens",
)


def cell_id(params: dict) -> str:
    """Stable 16-hex-digit hash of a cell's identity parameters."""
    ident = {k: params.get(k) for k in IDENTITY}
    ident["temperature"] = float(ident["temperature"])
    ident["top_p"] = float(ident["top_p"])
    if not ident["compile"]:  # added with --compile: eager cells keep the ids they always had
        del ident["compile"]
    if ident["long_prompts"] in (None, REFUSE):  # likewise for --long-prompts
        del ident["long_prompts"]
    if not ident["lookup_tokens"]:  # and for --lookup-tokens
        del ident["lookup_tokens"]
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prune_reason(spec: SweepSpec, method: str, batch_size: int, top_k: int | None, depth: int | None,
                 total_tokens: int | None) -> str | None:
    """Why a combination cannot run, or None."""
    if batch_size > spec.prompts:
        return f"batch_size {batch_size} is larger than prompts ({spec.prompts}): no full batch to run"
    if method == "ar":
        return None
    assert top_k is not None and depth is not None and total_tokens is not None
    pool = pool_size(top_k, depth)
    if total_tokens - 1 > pool:
        return (
            f"total_tokens {total_tokens} exceeds the tree: top_k {top_k} and depth {depth} "
            f"give at most 1 + {pool} tokens"
        )
    return None


def plan(spec: SweepSpec, policy: TreePolicy | None = None) -> list[Cell]:
    """All cells of the spec in run order, pruned ones included (status PRUNED, with reason).

    top_k auto takes (top_k, depth, total_tokens) from `policy` (one cell per batch size, draft
    and dataset, whatever the spec's depths); a choice of total_tokens 1 runs the draft's cell as AR."""
    if AUTO in spec.top_k and policy is None:
        raise ScyllaError("top_k 'auto' needs the trees priced for this sweep (harness.auto_trees.sweep_policy)")
    shared = dict(
        target=spec.target, dtype=spec.dtype, device=spec.device, max_new_tokens=spec.max_new_tokens,
        prompts=spec.prompts, turns=spec.turns, top_p=spec.top_p, seed=spec.seed,
        system_prompt=spec.system_prompt, compile=spec.compile, long_prompts=spec.long_prompts,
    )
    cells: dict[str, Cell] = {}

    def add(**params) -> Cell:
        params.update(shared)
        cid = cell_id(params)
        if cid not in cells:
            cells[cid] = Cell(cell_id=cid, **params)
        return cells[cid]

    for dataset in spec.datasets:
        for temperature in spec.temperatures:
            for batch in spec.batch_sizes:
                base = dict(dataset=dataset, batch_size=batch, temperature=float(temperature))
                reason = prune_reason(spec, "ar", batch, None, None, None)
                ar = add(method="ar", draft=None, top_k=None, top_k_setting=None, depth=None,
                         total_tokens=None, status=PRUNED if reason else PLANNED, reason=reason,
                         ar_partner=None, **base)
                for method in spec.all_methods:
                    if method == "ar":
                        continue
                    for draft in spec.draft[method]:
                        for setting in spec.top_k:
                            if setting == AUTO:
                                choice = policy(batch, draft, dataset, spec.lookup_tokens.get(method, 0))
                                trees = [(choice.top_k, choice.depth, choice.total_tokens)]
                            else:
                                k = int(setting)
                                trees = list(dict.fromkeys(
                                    (k, depth, total_tokens_for(k, depth) if n == TIED else int(n))
                                    for depth in spec.depths for n in spec.total_tokens))
                            for k, depth, n in trees:
                                reason = (prune_reason(spec, "ar", batch, None, None, None) if n == 1
                                          else prune_reason(spec, method, batch, k, depth, n))
                                add(method=method, draft=draft, top_k=k, top_k_setting=str(setting),
                                    depth=depth, total_tokens=n,
                                    lookup_tokens=spec.lookup_tokens.get(method, 0) if n > 1 else 0,
                                    status=PRUNED if reason else PLANNED, reason=reason,
                                    ar_partner=ar.cell_id, **base)
    return list(cells.values())
