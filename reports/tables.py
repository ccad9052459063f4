"""Derived tables: every number the report shows is computed here, from the cells frame.

Ratios are recomputed from raw counters where the cells are pooled (tau of several cells
= total emitted / total verify steps, as the harness defines it for one cell), so a
pooled tau is never a mean of ratios. Figures (figures.py) draw from these same frames,
which keeps the figures and the tables in agreement.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.pooled import fastest_fixed_trees, input_ablation, pooled_tau, tau_series
from harness.scaling_fit import LogFit, fit_log10
from reports.published import SCYLLA_CLAIMS, published_baselines
from roofline.tree_policy import NO_TREE, chain_label, tree_label
from scylla_impl.methods import BY_NAME, CONCAT, LABELS, PROJECTION, REPORT_ORDER, TRAINED

METHOD_ORDER = list(REPORT_ORDER)
DATASET_ORDER = ["mt_bench", "humaneval", "gsm8k", "alpaca", "cnn_dm", "natural_questions"]
DATASET_LABELS = {
    "mt_bench": "MT-bench", "humaneval": "HumanEval", "gsm8k": "GSM8K", "alpaca": "Alpaca",
    "cnn_dm": "CNN/DM", "natural_questions": "Natural Questions",
}


def method_labeller(cells: pd.DataFrame) -> Callable[[str], str]:
    """How the report names each method of these cells.

    A registry method is its label (EAGLE-2). A method the sweep named itself (`--methods mine
    --draft mine=DIR`, the bench's `scylla_lookup`) is named after the draft it ran (Scylla,
    Scylla-1), and a prompt-lookup chain grafted under a method's trees is named beside it
    (Scylla +lookup 4): the method's name alone says neither. Two methods that would read the same
    keep their own names in brackets. A name without cells reads as the registry says, or as it is.
    """
    labels: dict[str, str] = {}
    for m, g in cells.groupby("method", sort=False, dropna=True) if len(cells) else ():
        kinds = g["draft_method"].dropna().unique() if "draft_method" in g else ()
        kind = BY_NAME.get(kinds[0]) if len(kinds) == 1 else None
        if m in LABELS:
            label = LABELS[m]
        elif kind is not None:
            layers = g["draft_layers"].dropna().unique() if "draft_layers" in g else ()
            # Scylla stands for its deepest default draft (Method.layers), as in draft_name.
            other = kind.layers and len(layers) == 1 and int(layers[0]) != kind.layers[-1]
            label = kind.label + (f"-{int(layers[0])}" if other else "")
        else:
            label = m
        chains = g["lookup_tokens"].dropna() if "lookup_tokens" in g else ()
        labels[m] = label + chain_label(int(chains.max()) if len(chains) else 0)
    shared = {label for label, n in Counter(labels.values()).items() if n > 1}
    for m, label in list(labels.items()):
        if label in shared and m not in LABELS:
            labels[m] = f"{label} ({m})"
    return lambda m: labels.get(m, LABELS.get(m, m))


def dataset_label(d: str) -> str:
    return DATASET_LABELS.get(d, d)


def ordered(values, order: list[str]) -> list[str]:
    """Known names in their usual order first, then the rest alphabetically."""
    vals = list(dict.fromkeys(v for v in values if v is not None and v == v))
    return [v for v in order if v in vals] + sorted(v for v in vals if v not in order)


# --------------------------------------------------------------------------- headline


@dataclass(frozen=True)
class Headline:
    """The configuration the summary tables compare methods at (stated in every caption)."""

    temperature: float
    batch_size: int
    top_k_setting: str | None
    depth: int | None
    total_tokens: int | None
    drafts: dict[str, str | None]

    def describe(self) -> str:
        tree = (
            f"top_k={self.top_k_setting}, depth={self.depth}, total_tokens={self.total_tokens}"
            if self.top_k_setting is not None else "no speculative cells"
        )
        return f"T={self.temperature:g}, batch {self.batch_size}, {tree}"


def _draft_rank(rows: pd.DataFrame) -> pd.DataFrame:
    """Drafts by cell count, ties to the largest (most pretrained, deepest) draft."""
    g = rows.groupby("draft", dropna=False).agg(
        n=("cell_id", "size"),
        tokens=("pretrain_tokens", lambda s: s.max(skipna=True) if s.notna().any() else -1),
        layers=("draft_layers", lambda s: s.max(skipna=True) if s.notna().any() else -1),
    )
    return g.reset_index().sort_values(["n", "tokens", "layers", "draft"], ascending=[False, False, False, True])


def choose_headline(ok: pd.DataFrame) -> Headline:
    temps = ok["temperature"].dropna()
    temperature = 0.0 if (temps == 0).any() else float(temps.min()) if len(temps) else 0.0
    at_t = ok[ok["temperature"].fillna(0.0) == temperature]
    batch = int(at_t["batch_size"].min()) if at_t["batch_size"].notna().any() else 1
    rows = at_t[at_t["batch_size"] == batch]
    spec = rows[rows["method"] != "ar"]
    drafts: dict[str, str | None] = {}
    keep = []
    for method, mrows in spec.groupby("method"):
        rank = _draft_rank(mrows)
        draft = rank["draft"].iloc[0]
        drafts[method] = None if pd.isna(draft) else str(draft)
        keep.append(mrows[mrows["draft"].fillna("") == ("" if pd.isna(draft) else draft)])
    if not keep:
        return Headline(temperature, batch, None, None, None, drafts)
    pool = pd.concat(keep)
    trees = pool.groupby(["top_k_setting", "depth", "total_tokens"], dropna=False).size().reset_index(name="n")
    # Most cells first; among equals a fixed top_k (comparable across batch sizes), then
    # the larger tree (the EAGLE papers compare at their full node budget).
    trees["fixed"] = trees["top_k_setting"].astype(str) != "auto"
    trees["k"] = pd.to_numeric(trees["top_k_setting"], errors="coerce").fillna(0)
    trees = trees.sort_values(["n", "fixed", "total_tokens", "k", "depth"], ascending=False)
    best = trees.iloc[0]
    return Headline(
        temperature, batch,
        None if pd.isna(best["top_k_setting"]) else str(best["top_k_setting"]),
        None if pd.isna(best["depth"]) else int(best["depth"]),
        None if pd.isna(best["total_tokens"]) else int(best["total_tokens"]),
        drafts,
    )


def headline_cells(ok: pd.DataFrame, h: Headline) -> pd.DataFrame:
    """AR cells at the headline T and batch, and each method's headline draft at the headline tree."""
    base = ok[(ok["temperature"].fillna(0.0) == h.temperature) & (ok["batch_size"] == h.batch_size)]
    ar = base[base["method"] == "ar"]
    spec = base[base["method"] != "ar"]
    mask = pd.Series(True, index=spec.index)
    if h.top_k_setting is not None:
        mask &= spec["top_k_setting"].astype("string") == h.top_k_setting
    if h.depth is not None:
        mask &= spec["depth"] == h.depth
    if h.total_tokens is not None:
        mask &= spec["total_tokens"] == h.total_tokens
    draft_ok = spec.apply(lambda r: (h.drafts.get(r["method"]) or "") == (r["draft"] if isinstance(r["draft"], str) else ""), axis=1) if len(spec) else mask
    return pd.concat([ar, spec[mask & draft_ok]])


# --------------------------------------------------------------------------- acceptance


def tau_table(hcells: pd.DataFrame) -> pd.DataFrame:
    """Datasets x methods, pooled tau at the headline configuration, plus an 'all' row."""
    methods = ordered(hcells["method"], METHOD_ORDER)
    datasets = ordered(hcells["dataset"], DATASET_ORDER)
    out = pd.DataFrame(index=datasets + ["all"], columns=methods, dtype=float)
    for m in methods:
        mc = hcells[hcells["method"] == m]
        for d in datasets:
            dc = mc[mc["dataset"] == d]
            if len(dc):
                out.loc[d, m] = pooled_tau(dc)
        if len(mc):
            out.loc["all", m] = pooled_tau(mc)
    out.index.name = "dataset"
    return out


def speedup_table(hcells: pd.DataFrame) -> pd.DataFrame:
    """Datasets x methods, mean speedup over AR at the headline configuration."""
    spec = hcells[hcells["method"] != "ar"]
    if spec.empty:
        return pd.DataFrame()
    return spec.pivot_table(index="dataset", columns="method", values="speedup_vs_ar", aggfunc="mean")


def claims_table(tau: pd.DataFrame) -> pd.DataFrame:
    """Scylla minus each baseline per dataset, against the deltas the Scylla paper reports."""
    rows = []
    if "scylla" not in tau.columns:
        return pd.DataFrame()
    for claim in SCYLLA_CLAIMS:
        if claim.baseline not in tau.columns:
            continue
        for d in tau.index:
            s, b = tau.loc[d, "scylla"], tau.loc[d, claim.baseline]
            if pd.isna(s) or pd.isna(b):
                continue
            delta = float(s - b)
            if delta < claim.low:
                verdict = "below claim"
            elif claim.high is not None and delta > claim.high:
                verdict = "above claim"
            else:
                verdict = "within claim"
            rows.append({
                "baseline": claim.baseline, "dataset": d, "scylla_tau": float(s), "baseline_tau": float(b),
                "delta": delta, "claim": claim.text, "verdict": verdict,
            })
    return pd.DataFrame(rows)


def position_acceptance(hcells: pd.DataFrame) -> pd.DataFrame:
    """Pooled per-position acceptance per method: columns method, position, cond, uncond.

    Pooling goes through the counts A_k = uncond_k * steps (what the harness derived the
    lists from), so conditional rates are ratios of pooled counts, not means of ratios.
    """
    rows = []
    for m in ordered(hcells["method"], METHOD_ORDER):
        if m == "ar":
            continue
        mc = hcells[hcells["method"] == m]
        acc: dict[int, float] = {}
        total_steps = 0.0
        for _, r in mc.iterrows():
            unc = r["accept_uncond"]
            cond = r["accept_cond"]
            if (unc is None or len(unc) == 0) and cond is not None and len(cond):
                unc = np.cumprod(np.asarray(cond, dtype=float))
            if unc is None or len(unc) == 0:
                continue
            steps = float(r["verify_steps"]) if pd.notna(r["verify_steps"]) else 1.0
            total_steps += steps
            for k, u in enumerate(unc, start=1):
                if u is not None and np.isfinite(u):
                    acc[k] = acc.get(k, 0.0) + float(u) * steps
        if not total_steps:
            continue
        prev = total_steps
        for k in sorted(acc):
            rows.append({
                "method": m, "position": k,
                "cond": acc[k] / prev if prev else np.nan,
                "uncond": acc[k] / total_steps,
                "reached": prev,  # steps that got this far: the conditional rate's sample size
            })
            prev = acc[k]
    return pd.DataFrame(rows, columns=["method", "position", "cond", "uncond", "reached"])


# --------------------------------------------------------------------------- throughput


def throughput_cells(ok: pd.DataFrame, h: Headline) -> pd.DataFrame:
    """Cells for throughput vs batch: headline T, drafts and depth; every top_k setting."""
    base = ok[ok["temperature"].fillna(0.0) == h.temperature]
    spec = base[base["method"] != "ar"]
    keep = spec.apply(lambda r: (h.drafts.get(r["method"]) or "") == (r["draft"] if isinstance(r["draft"], str) else ""), axis=1) if len(spec) else pd.Series(dtype=bool)
    spec = spec[keep] if len(spec) else spec
    # Fixed top_k settings at the headline depth and node budget; `auto` brings its own tree.
    if h.depth is not None:
        spec = spec[(spec["top_k_setting"] == "auto") | (spec["depth"] == h.depth)]
    if h.total_tokens is not None:
        spec = spec[(spec["top_k_setting"] == "auto") | (spec["total_tokens"] == h.total_tokens)]
    return pd.concat([base[base["method"] == "ar"], spec])


def _setting_key(s) -> float:
    """Sort key for top_k settings: fixed values ascending, then auto, then anything else."""
    if not isinstance(s, str):
        return -1.0
    return 1e6 if s == "auto" else float(s) if s.isdigit() else 2e6


def throughput_table(tcells: pd.DataFrame) -> pd.DataFrame:
    """Rows (method, batch_size, top_k_setting): mean speedup and tokens/s over datasets."""
    spec = tcells[tcells["method"] != "ar"].copy()
    ar = tcells[tcells["method"] == "ar"]
    rows = []
    for (m, b, s), g in spec.groupby(["method", "batch_size", "top_k_setting"]):
        rows.append({
            "method": m, "batch_size": int(b), "top_k_setting": str(s),
            "top_k_used": ", ".join(str(int(k)) for k in sorted(g["top_k"].dropna().unique())),
            "datasets": int(g["dataset"].nunique()),
            "tau": pooled_tau(g),
            "tokens_per_s": float(g["tokens_per_s"].mean()),
            "speedup": float(g["speedup_vs_ar"].mean()),
        })
    for b, g in ar.groupby("batch_size"):
        rows.append({
            "method": "ar", "batch_size": int(b), "top_k_setting": "-", "top_k_used": "-",
            "datasets": int(g["dataset"].nunique()), "tau": pooled_tau(g),
            "tokens_per_s": float(g["tokens_per_s"].mean()), "speedup": 1.0,
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {m: i for i, m in enumerate(ordered(out["method"], METHOD_ORDER))}
    out["_m"] = out["method"].map(order)
    out["_s"] = [_setting_key(s) for s in out["top_k_setting"]]
    return out.sort_values(["_m", "batch_size", "_s"]).drop(columns=["_m", "_s"]).reset_index(drop=True)


def best_setting_per_batch(tt: pd.DataFrame) -> pd.DataFrame:
    """For each (method, batch): the fastest fixed top_k, and whether auto keeps up with it."""
    rows = []
    spec = tt[tt["method"] != "ar"]
    for (m, b), g in spec.groupby(["method", "batch_size"]):
        fixed = g[g["top_k_setting"] != "auto"]
        auto = g[g["top_k_setting"] == "auto"]
        best = fixed.loc[fixed["speedup"].idxmax()] if len(fixed) else None
        rows.append({
            "method": m, "batch_size": int(b),
            "best_fixed": best["top_k_setting"] if best is not None else None,
            "best_fixed_speedup": float(best["speedup"]) if best is not None else np.nan,
            "auto_speedup": float(auto["speedup"].iloc[0]) if len(auto) else np.nan,
        })
    return pd.DataFrame(rows)


def tree_grid(ok: pd.DataFrame, h: Headline) -> tuple[str | None, pd.DataFrame]:
    """top_k x depth at the headline T and batch for one method with a real grid (>=2 x >=2)."""
    base = ok[(ok["temperature"].fillna(0.0) == h.temperature) & (ok["batch_size"] == h.batch_size)]
    base = base[(base["method"] != "ar") & (base["top_k_setting"] != "auto") & base["top_k"].notna()]
    # One method's grid: the trained methods from the report's last (Scylla) back.
    candidates = ordered(base["method"], [m for m in reversed(METHOD_ORDER) if m in TRAINED])
    for m in candidates:
        mc = base[(base["method"] == m) & (base["draft"].fillna("") == (h.drafts.get(m) or ""))]
        if mc["top_k"].nunique() >= 2 and mc["depth"].nunique() >= 2:
            rows = []
            for (k, d), g in mc.groupby(["top_k", "depth"]):
                g = g[g["total_tokens"] == g["total_tokens"].max()]
                rows.append({"top_k": int(k), "depth": int(d), "tau": pooled_tau(g),
                             "speedup": float(g["speedup_vs_ar"].mean()), "datasets": int(g["dataset"].nunique())})
            return m, pd.DataFrame(rows)
    return None, pd.DataFrame()


# --------------------------------------------------------------------------- tree policy


def tree_policy_table(ok: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """Per (method, draft, batch): top_k auto's tree and tokens/s beside the fastest fixed tree's.

    tokens/s is the mean over the datasets each tree ran on; the fixed trees compete over every
    (top_k, depth, total_tokens) the sweep ran, not one headline shape."""
    base = ok[(ok["temperature"].fillna(0.0) == temperature) & (ok["method"] != "ar")]
    ar = ok[(ok["temperature"].fillna(0.0) == temperature) & (ok["method"] == "ar")]
    rows = []
    for (m, draft), g in base.groupby(["method", base["draft"].fillna("")]):
        best = fastest_fixed_trees(g).set_index("batch_size")
        for b, auto in g[g["top_k_setting"] == "auto"].groupby("batch_size"):
            if b not in best.index:
                continue
            f, a = best.loc[b], auto.iloc[0]
            auto_tps = float(auto["tokens_per_s"].mean())
            rows.append({
                "method": m, "draft": draft, "batch_size": int(b),
                "ar_tokens_per_s": float(ar[ar["batch_size"] == b]["tokens_per_s"].mean()),
                "best_fixed": tree_label(f["top_k"], f["depth"], f["total_tokens"]),
                "best_fixed_top_k": int(f["top_k"]), "best_fixed_tokens_per_s": float(f["tokens_per_s"]),
                "auto": tree_label(a["top_k"], a["depth"], a["total_tokens"]), "auto_top_k": int(a["top_k"]),
                "auto_tokens_per_s": auto_tps,
                "auto_over_best": auto_tps / f["tokens_per_s"] if f["tokens_per_s"] > 0 else np.nan,
                "fixed_trees": int(f["fixed_trees"]),
            })
    return pd.DataFrame(rows)


def auto_prediction_table(ok: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Each top_k auto cell beside what its pricing predicted (Results.predictions): spec/AR
    (and the 10-90% range a run of the sweep's prompts would measure, prompt sampling only), tau,
    the step (seconds with every row decoding, against the cell's median step), and occupancy,
    the share of the batch's row slots its steps filled (verify steps over batch steps x batch
    size; a last batch with fewer prompts than the batch size counts short). A missed spec/AR
    is then either the tau or the step time."""
    auto = ok[ok["top_k_setting"] == "auto"]
    if auto.empty or predictions.empty:
        return pd.DataFrame()
    keys = ["results_dir", "draft", "lookup_tokens", "dataset", "batch_size", "top_k", "depth", "total_tokens"]
    cells = auto.assign(draft=auto["draft"].fillna(""), lookup_tokens=auto["lookup_tokens"].fillna(0).astype(int))
    joined = cells.merge(predictions, on=keys, how="inner")  # a cell planned from another record has none
    if joined.empty:
        return pd.DataFrame()
    steps = pd.to_numeric(joined["batch_steps"], errors="coerce") * joined["batch_size"]
    return pd.DataFrame({
        "method": joined["method"], "dataset": joined["dataset"], "batch_size": joined["batch_size"],
        "tree": [tree_label(k, d, n, m)
                 for k, d, n, m in zip(joined["top_k"], joined["depth"], joined["total_tokens"], joined["lookup_tokens"])],
        "predicted_speedup": joined["predicted_speedup"],
        "predicted_speedup_low": joined["predicted_speedup_low"], "predicted_speedup_high": joined["predicted_speedup_high"],
        "speedup": joined["speedup_vs_ar"],
        "predicted_tau": joined["predicted_tau"], "tau": joined["tau"],
        "predicted_step_s": joined["predicted_step_s"], "step_s": joined["step_time_median_s"],
        "predicted_occupancy": joined["predicted_occupancy"],
        "occupancy": pd.to_numeric(joined["verify_steps"], errors="coerce") / steps.where(steps > 0),
    }).sort_values(["batch_size", "method", "dataset"]).reset_index(drop=True)


def auto_prediction_summary(pred: pd.DataFrame) -> pd.DataFrame:
    """Per batch size, over the cells of an `auto_prediction_table` that ran a tree: how many
    (cells), the median measured / predicted spec/AR (ratio), how many have a predicted range
    (ranged) and how many measured within it (inside)."""
    columns = ["batch_size", "cells", "ratio", "ranged", "inside"]
    if pred.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for b, cells in pred[pred["tree"] != NO_TREE].groupby("batch_size"):
        ranged = cells.dropna(subset=["predicted_speedup_low", "predicted_speedup_high", "speedup"])
        rows.append({"batch_size": int(b), "cells": len(cells),
                     "ratio": float((cells["speedup"] / cells["predicted_speedup"]).median()), "ranged": len(ranged),
                     "inside": int(ranged["speedup"].between(ranged["predicted_speedup_low"],
                                                             ranged["predicted_speedup_high"]).sum())})
    return pd.DataFrame(rows, columns=columns)


def throughput_surface(ok: pd.DataFrame, method: str, draft: str, temperature: float) -> pd.DataFrame:
    """Fixed trees of one draft: mean tokens/s over datasets per (batch, top_k, depth), largest size kept."""
    g = ok[(ok["temperature"].fillna(0.0) == temperature) & (ok["method"] == method)
           & (ok["draft"].fillna("") == draft) & (ok["top_k_setting"] != "auto")]
    if g.empty:
        return pd.DataFrame()
    mean = g.groupby(["batch_size", "top_k", "depth", "total_tokens"], as_index=False)["tokens_per_s"].mean()
    return mean.sort_values("total_tokens").groupby(["batch_size", "top_k", "depth"], as_index=False).last()


# --------------------------------------------------------------------------- scaling


@dataclass
class ScalingSeries:
    method: str
    variable: str  # "pretrain_tokens" or "draft_layers"
    fixed: str  # the other variable's value, as text
    points: pd.DataFrame  # x, tau, speedup (mean spec/AR tokens/s over the datasets), draft, datasets
    fit: LogFit | None  # of the pooled points
    by_dataset: dict[str, LogFit | None]  # the same series, one dataset at a time


def scaling_series(ok: pd.DataFrame, h: Headline) -> list[ScalingSeries]:
    """Series where drafts differ in pretraining tokens (or layers) at a fixed other value."""
    base = ok[(ok["temperature"].fillna(0.0) == h.temperature) & (ok["batch_size"] == h.batch_size)]
    base = base[base["method"] != "ar"]
    out = []
    tree = ["top_k_setting", "depth", "total_tokens"]
    for variable, other in (("pretrain_tokens", "draft_layers"), ("draft_layers", "pretrain_tokens")):
        # A series holds everything but `variable` fixed, the tree included: a scaling
        # sweep usually runs at one tree, not necessarily the headline one.
        # ... and the input path: the architecture ablation's two drafts are not a series.
        for (m, fixed, *_), g in base.groupby(["method", other, "draft_input", *tree], dropna=False):
            g = g[g[variable].notna() & (g[variable] > 0)]
            if g[variable].nunique() < 2:
                continue
            series = tau_series(g, variable)
            pooled = series.pop("pooled")
            if len(pooled) < 2:  # the drafts share no dataset
                continue
            g = g[g["dataset"].isin(series)]
            # Net speed beside tau: a deeper draft accepts more but drafts slower (Theorem 1.2's
            # capacity ablation asks which wins).
            points = pd.DataFrame([
                {"x": x, "tau": tau, "datasets": len(series),
                 "speedup": float(pd.to_numeric(g.loc[g[variable] == x, "speedup_vs_ar"], errors="coerce").mean()),
                 "draft": ", ".join(sorted(g.loc[g[variable] == x, "draft"].dropna().unique()))}
                for x, tau in pooled])
            by_dataset = {dataset: fit_log10(*zip(*pts)) for dataset, pts in series.items()}
            fixed_txt = "n/a" if pd.isna(fixed) else (f"{int(fixed):,}" if other == "draft_layers" else f"{float(fixed):.3g}")
            k, d = g["top_k_setting"].iloc[0], g["depth"].iloc[0]
            fixed_txt += f"; top_k={k}, depth={d}"
            out.append(ScalingSeries(m, variable, fixed_txt, points, fit_log10(points["x"], points["tau"]), by_dataset))
    return out


@dataclass
class InputAblation:
    method: str
    layers: int
    pretrain_tokens: float | None
    tree: str  # top_k and depth, as text
    table: pd.DataFrame  # harness/pooled.py: input_ablation


def input_ablations(ok: pd.DataFrame, h: Headline) -> list[InputAblation]:
    """Pairs of drafts alike in all but their input path (projection against concatenation):
    the architecture ablation, at the headline batch size and temperature, one per tree."""
    base = ok[(ok["temperature"].fillna(0.0) == h.temperature) & (ok["batch_size"] == h.batch_size)
              & ok["draft_input"].notna()]
    out = []
    keys = ["method", "draft_layers", "pretrain_tokens", "top_k_setting", "depth", "total_tokens"]
    for (m, layers, tokens, k, d, _), g in base.groupby(keys, dropna=False):
        if set(g["draft_input"]) >= {PROJECTION, CONCAT}:
            table = input_ablation(g)
            if len(table) > 1:  # a dataset both drafts ran on, and the pooled row
                out.append(InputAblation(m, int(layers), None if pd.isna(tokens) else float(tokens),
                                         f"top_k={k}, depth={d}", table))
    return out


# --------------------------------------------------------------------------- checks, metadata


def lossless_table(ok: pd.DataFrame) -> pd.DataFrame:
    spec = ok[ok["method"] != "ar"]
    rows = []
    for m, g in spec.groupby("method"):
        t0 = g[g["temperature"].fillna(0.0) == 0]
        rows.append({
            "method": m,
            "cells_t0": len(t0),
            "passed": int((t0["lossless"] == True).sum()),  # noqa: E712  (nullable boolean)
            "mismatched": int((t0["lossless"] == False).sum()),  # noqa: E712
            "not_checked": int(t0["lossless"].isna().sum()),
            "near_ties": int(t0["lossless_near_ties"].fillna(0).sum()),
        })
    out = pd.DataFrame(rows, columns=["method", "cells_t0", "passed", "mismatched", "not_checked", "near_ties"])
    if len(out):
        order = {m: i for i, m in enumerate(ordered(out["method"], METHOD_ORDER))}
        out = out.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)
    return out


def lossless_failures(ok: pd.DataFrame) -> pd.DataFrame:
    bad = ok[(ok["method"] != "ar") & (ok["lossless"] == False)]  # noqa: E712
    return sort_cells(bad)


def sort_cells(cells: pd.DataFrame) -> pd.DataFrame:
    if cells.empty:
        return cells
    m_order = {m: i for i, m in enumerate(ordered(cells["method"], METHOD_ORDER))}
    d_order = {d: i for i, d in enumerate(ordered(cells["dataset"], DATASET_ORDER))}
    c = cells.copy()
    c["_m"] = c["method"].map(m_order)
    c["_d"] = c["dataset"].map(d_order)
    c["_s"] = [_setting_key(s) for s in c["top_k_setting"]]
    keys = ["_m", "draft", "_d", "batch_size", "_s", "depth", "total_tokens", "temperature", "cell_id"]
    return c.sort_values(keys, na_position="first").drop(columns=["_m", "_d", "_s"])


def _distinct(series: pd.Series, limit: int = 6) -> str:
    vals = [str(v) for v in pd.unique(series.dropna()) if str(v) != ""]
    if not vals:
        return "not recorded"
    more = f" (+{len(vals) - limit} more)" if len(vals) > limit else ""
    return ", ".join(vals[:limit]) + more


def metadata_rows(cells: pd.DataFrame, dirs: list) -> list[tuple[str, str]]:
    """(label, value) pairs describing where and how the results were measured."""
    started = pd.to_datetime(cells["started_at"], errors="coerce", utc=True).dropna()
    when = f"{started.min():%Y-%m-%d %H:%M} to {started.max():%Y-%m-%d %H:%M} UTC" if len(started) else "not recorded"
    dur = pd.to_numeric(cells["duration_s"], errors="coerce").sum()
    devices = cells["device_name"].where(cells["device_name"].notna(), cells["device"])
    return [
        ("Results", ", ".join(str(d) for d in dirs)),
        ("Runs", _distinct(cells["run_id"])),
        ("Cells", f"{len(cells)} ({(cells['status'] == 'ok').sum()} ok, {(cells['status'] == 'failed').sum()} failed, {(cells['status'] == 'pruned').sum()} pruned)"),
        ("Measured", f"{when}; {dur / 60:.1f} min of cell time" if dur else when),
        ("Device", _distinct(devices)),
        ("Profile", _distinct(cells["profile_id"])),
        ("Target", _distinct(cells["target"]) + " | fingerprint " + _distinct(cells["target_fingerprint"])),
        ("Dtype / threads", _distinct(cells["dtype"]) + " / " + _distinct(cells["threads"])),
        ("Git commit", _distinct(cells["git_commit"])),
        ("Chat template", "hash " + _distinct(cells["chat_template_hash"])),
        ("System prompt", _distinct(cells["system_prompt"].map(lambda s: s if not isinstance(s, str) or len(s) < 80 else s[:77] + "..."))),
        ("Decode", f"max_new_tokens {_distinct(cells['max_new_tokens'])}; prompts per dataset {_distinct(cells['n_prompts'])}"),
    ]


def _truncated(counts: pd.Series) -> str:
    """A dataset's prompts cut to fit the context (--long-prompts truncate): the most any cell cut."""
    known = counts.dropna()
    return "-" if known.empty else f"{int(known.max())} (cut in the middle)" if known.max() > 0 else "0"


def dataset_sources(cells: pd.DataFrame) -> pd.DataFrame:
    g = cells.groupby("dataset", dropna=False).agg(
        source=("dataset_source", _distinct), checksum=("dataset_checksum", _distinct),
        prompts=("n_prompts", _distinct), cells=("cell_id", "size"),
        truncated=("prompts_truncated", _truncated),
    ).reset_index()
    order = {d: i for i, d in enumerate(ordered(g["dataset"], DATASET_ORDER))}
    return g.sort_values("dataset", key=lambda s: s.map(order)).reset_index(drop=True)


def package_versions(cells: pd.DataFrame) -> pd.DataFrame:
    """Package -> version(s) seen across cells (more than one means mixed environments)."""
    seen: dict[str, set[str]] = {}
    for raw in cells["package_versions"].dropna().unique():
        try:
            doc = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(doc, dict):
            for k, v in doc.items():
                seen.setdefault(str(k), set()).add(str(v))
    return pd.DataFrame(
        [{"package": k, "version": ", ".join(sorted(v))} for k, v in sorted(seen.items())],
        columns=["package", "version"],
    )


def published_table(tau: pd.DataFrame, speedup: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """Published tau (speedup) per dataset at the headline temperature, with this run's."""
    pub = published_baselines()
    pub = pub[np.isclose(pub["temperature"], temperature)]
    if pub.empty:
        return pd.DataFrame()
    datasets = ordered(list(pub["dataset"]) + [d for d in tau.index if d != "all"], DATASET_ORDER)
    rows = []
    for m in [c for c in tau.columns if c != "ar"]:
        row = {"source": "measured here", "model": "this run", "method": m}
        for d in datasets:
            row[d] = tau.loc[d, m] if d in tau.index else np.nan
            has = d in speedup.index and m in speedup.columns
            row[f"{d}__speedup"] = speedup.loc[d, m] if has else np.nan
        rows.append(row)
    for (model, m, cite), g in pub.groupby(["target_model", "method", "citation"], sort=False):
        row = {"source": cite, "model": model, "method": m}
        for d in datasets:
            hit = g[g["dataset"] == d]
            row[d] = float(hit["tau"].iloc[0]) if len(hit) else np.nan
            row[f"{d}__speedup"] = float(hit["speedup"].iloc[0]) if len(hit) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
