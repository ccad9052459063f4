"""Results over several cells together, shared by the scaling run and the report: tau pooled
as a ratio of totals (as a cell's own tau is, harness/metrics.py), and the fastest fixed tree
per batch size (the optimal top_k of Theorem 1.3). Torch-free, so the report's tables load
without the engine."""

import numpy as np
import pandas as pd


def pooled_tau(cells: pd.DataFrame) -> float:
    """tau of several cells together: total emitted tokens / total verify steps."""
    em = pd.to_numeric(cells["emitted_tokens"], errors="coerce")
    st = pd.to_numeric(cells["verify_steps"], errors="coerce")
    ok = em.notna() & st.notna() & (st > 0)
    if ok.any() and ok.all():
        return float(em[ok].sum() / st[ok].sum())
    # Counters missing (an older writer): fall back to the step-weighted mean of tau.
    tau = pd.to_numeric(cells["tau"], errors="coerce")
    w = st.where(st > 0).fillna(1.0)
    keep = tau.notna()
    return float(np.average(tau[keep], weights=w[keep])) if keep.any() else float("nan")


def tau_series(cells: pd.DataFrame, x: str) -> dict[str, list[tuple[float, float]]]:
    """Points (x, pooled tau) of cells whose drafts differ in column `x` (a scaling series), per
    dataset and "pooled" (last), over the datasets every x value has: a failed cell must not
    move a point by changing its dataset mix."""
    if cells.empty:
        return {"pooled": []}
    common = set.intersection(*(set(g["dataset"]) for _, g in cells.groupby(x)))
    cells = cells[cells["dataset"].isin(common)]
    groups = [(d, cells[cells["dataset"] == d]) for d in sorted(common)] + [("pooled", cells)]
    return {name: sorted((float(v), pooled_tau(gv)) for v, gv in g.groupby(x)) for name, g in groups}


def fastest_fixed_trees(cells: pd.DataFrame) -> pd.DataFrame:
    """Per batch size, the fixed tree (top_k, depth, total_tokens) with the most tokens/s, mean
    over the datasets it ran on; `cells` are one draft's speculative cells at one temperature.
    Columns: batch_size, top_k, depth, total_tokens, tokens_per_s, fixed_trees (how many competed)."""
    fixed = cells[(cells["top_k_setting"] != "auto") & cells["top_k"].notna()]
    rows = []
    for b, g in fixed.groupby("batch_size"):
        trees = g.groupby(["top_k", "depth", "total_tokens"])["tokens_per_s"].mean().sort_values(ascending=False)
        (k, d, n), tps = trees.index[0], float(trees.iloc[0])
        rows.append({"batch_size": int(b), "top_k": int(k), "depth": int(d), "total_tokens": int(n),
                     "tokens_per_s": tps, "fixed_trees": int(len(trees))})
    return pd.DataFrame(rows, columns=["batch_size", "top_k", "depth", "total_tokens", "tokens_per_s", "fixed_trees"])
