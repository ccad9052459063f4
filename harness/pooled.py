"""Results over several cells together, shared by the scaling run and the report: tau pooled
as a ratio of totals (as a cell's own tau is, harness/metrics.py), and the fastest fixed tree
per batch size (the optimal top_k of Theorem 1.3), and the input-path ablation of one draft.
Torch-free, so the report's tables load without the engine."""

import numpy as np
import pandas as pd

from harness.scaling_fit import t975
from scylla_impl.methods import CONCAT, PROJECTION


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


def input_ablation(cells: pd.DataFrame) -> pd.DataFrame:
    """Scylla's architecture ablation: the same draft trained with its input projection and with
    plain concatenation (column draft_input), compared per dataset and pooled over the datasets
    both have. `cells` are the two drafts' speculative cells at one tree, batch and temperature.
    Columns: dataset, tau_projection, tau_concat, tau_gain (concat - projection), speedup_projection,
    speedup_concat (mean spec/AR tokens/s), and on the pooled row gain_ci95, the half-width of a
    95% t-interval of the per-dataset gains (nan below two datasets)."""
    both = set(cells.loc[cells["draft_input"] == PROJECTION, "dataset"]) & set(cells.loc[cells["draft_input"] == CONCAT, "dataset"])
    cells = cells[cells["dataset"].isin(both)]
    rows = []
    for name, g in [(d, cells[cells["dataset"] == d]) for d in sorted(both)] + [("pooled", cells)]:
        row = {"dataset": name}
        for kind in (PROJECTION, CONCAT):
            part = g[g["draft_input"] == kind]
            row[f"tau_{kind}"] = pooled_tau(part)
            row[f"speedup_{kind}"] = float(pd.to_numeric(part["speedup_vs_ar"], errors="coerce").mean())
        row["tau_gain"] = row[f"tau_{CONCAT}"] - row[f"tau_{PROJECTION}"]
        rows.append(row)
    out = pd.DataFrame(rows, columns=["dataset", f"tau_{PROJECTION}", f"tau_{CONCAT}", "tau_gain",
                                      f"speedup_{PROJECTION}", f"speedup_{CONCAT}"])
    gains = out.loc[out["dataset"] != "pooled", "tau_gain"].to_numpy(dtype=float)
    ci = t975(len(gains) - 1) * gains.std(ddof=1) / np.sqrt(len(gains)) if len(gains) >= 2 else float("nan")
    out["gain_ci95"] = np.where(out["dataset"] == "pooled", ci, np.nan)
    return out
