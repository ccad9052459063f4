"""Roofline profiles -> the numbers the report shows: ceilings, ridge, knee points, T(b, n).

Profiles come from `scylla profile` (roofline/profile.py documents the JSON). Anything a
profile could not measure is simply absent there; every accessor here returns None or an
empty frame for it, and the report says "not measured" rather than inventing a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.load import Profile, number


@dataclass(frozen=True)
class Ceilings:
    bandwidth: float | None  # best measured bytes/s over the streaming kernels
    bandwidth_kernel: str | None
    compute: dict[str, float]  # dtype -> measured FLOP/s
    spec_bandwidth: float | None
    spec_compute: dict[str, float]
    i_crit: float | None  # measured, FLOP/byte
    i_crit_spec: float | None


def _numbers(d) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    out = {}
    for k, _v in d.items():
        x = number(d, k)
        if x is not None and x > 0:
            out[str(k)] = x
    return out


def ceilings(p: Profile) -> Ceilings:
    doc = p.doc
    bw = _numbers(doc.get("bandwidth_bytes_per_s"))
    kernel = max(bw, key=bw.get) if bw else None
    compute = _numbers(doc.get("flops_per_s"))
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    spec_bw = number(spec, "bandwidth_bytes_per_s") if spec else None
    spec_compute = _numbers(spec.get("flops_per_s")) if spec else {}
    i_crit = number(doc, "i_crit", "measured")
    if i_crit is None:
        i_crit = number(doc, "i_crit")
    i_crit_spec = number(doc, "i_crit", "spec")
    return Ceilings(bw.get(kernel) if kernel else None, kernel, compute, spec_bw, spec_compute, i_crit, i_crit_spec)


def _pick(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in df.columns:
            return n
    return None


def knee_points(p: Profile) -> pd.DataFrame:
    """Verify-knee timings as columns batch_size, tree_tokens, tokens (= b*n), time_s."""
    for name, df in p.tables.items():
        if "knee" not in name.lower():
            continue
        b = _pick(df, ("batch_size", "b", "batch", "rows"))
        n = _pick(df, ("tree_tokens", "n", "tokens_per_row", "n_tokens", "new_tokens"))
        t = _pick(df, ("time_s", "median_s", "seconds", "t_s", "step_s"))
        if not (b and n and t):
            continue
        out = pd.DataFrame({
            "batch_size": pd.to_numeric(df[b], errors="coerce"),
            "tree_tokens": pd.to_numeric(df[n], errors="coerce"),
            "time_s": pd.to_numeric(df[t], errors="coerce"),
        }).dropna()
        out["tokens"] = out["batch_size"] * out["tree_tokens"]
        # Several repetitions per point: the median is the robust summary.
        return out.groupby(["batch_size", "tree_tokens", "tokens"], as_index=False)["time_s"].median()
    return pd.DataFrame(columns=["batch_size", "tree_tokens", "tokens", "time_s"])


@dataclass(frozen=True)
class KneeFit:
    """T(b, n) = t0 + slope * max(0, b*n - knee): flat until the knee, then linear."""

    knee: float
    t0: float
    slope: float

    def __call__(self, tokens):
        x = np.asarray(tokens, dtype=float)
        return self.t0 + self.slope * np.maximum(0.0, x - self.knee)


def fit_knee(points: pd.DataFrame, knee: float | None) -> KneeFit | None:
    """Fit the two-piece model; with no knee given, the knee minimising squared error."""
    if len(points) < 3:
        return None
    x = points["tokens"].to_numpy(float)
    y = points["time_s"].to_numpy(float)

    def solve(k: float) -> tuple[float, float, float]:
        # Linear least squares in (t0, slope) for a fixed knee.
        a = np.column_stack([np.ones_like(x), np.maximum(0.0, x - k)])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        return float(coef[0]), float(coef[1]), float(np.sum((a @ coef - y) ** 2))

    if knee is None:
        cands = np.unique(x)
        knee = float(min(cands, key=lambda k: solve(k)[2]))
    t0, slope, _ = solve(float(knee))
    return KneeFit(float(knee), t0, max(slope, 0.0))


def knee_tokens(p: Profile) -> float | None:
    return number(p.doc, "knee_tokens")


def topk_policy(p: Profile) -> pd.DataFrame:
    pol = p.doc.get("topk_policy")
    if not isinstance(pol, list):
        return pd.DataFrame(columns=["batch_size", "top_k", "total_tokens"])
    df = pd.DataFrame([r for r in pol if isinstance(r, dict)])
    for c in ("batch_size", "top_k", "total_tokens"):
        if c not in df.columns:
            df[c] = np.nan
    return df[["batch_size", "top_k", "total_tokens"]].sort_values("batch_size").reset_index(drop=True)


def facts(p: Profile) -> list[tuple[str, str]]:
    """Device facts worth a line in the report (whatever the profile recorded)."""
    dev = p.doc.get("device")
    rows: list[tuple[str, str]] = []
    if isinstance(dev, dict):
        for k, v in dev.items():
            if isinstance(v, (str, int, float, bool)) and str(v) != "":
                rows.append((str(k), str(v)))
    unavailable = p.doc.get("unavailable") or p.doc.get("not_measured")
    if isinstance(unavailable, dict):
        for k, v in unavailable.items():
            rows.append((f"not measured: {k}", str(v)))
    return rows
