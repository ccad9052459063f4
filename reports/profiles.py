"""Roofline profiles -> the numbers the report shows: ceilings, ridge, knee points, T(b, n).

Profiles come from `scylla profile` (roofline/profile_doc.ProfileRecord documents the JSON). Anything a
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
    i_crit_dtype: str | None = None  # the dtype whose peak the ridge is computed with


def ceilings(p: Profile) -> Ceilings:
    doc = p.document
    return Ceilings(doc.peak_bandwidth, doc.peak_bandwidth_kernel, doc.flops, doc.spec_bandwidth, doc.spec_flops,
                    doc.i_crit, doc.i_crit_spec, doc.i_crit_dtype)


def knee_points(p: Profile) -> pd.DataFrame:
    """Verify-knee timings as columns batch_size, tree_tokens, tokens (= b*n), time_s: the
    profiler's knee.parquet (roofline/profile.py), one row per repetition, as medians."""
    df = p.tables.get("knee")
    if df is None or not {"batch_size", "tree_tokens", "seconds"} <= set(df.columns):
        return pd.DataFrame(columns=["batch_size", "tree_tokens", "tokens", "time_s"])
    out = pd.DataFrame({
        "batch_size": pd.to_numeric(df["batch_size"], errors="coerce"),
        "tree_tokens": pd.to_numeric(df["tree_tokens"], errors="coerce"),
        "time_s": pd.to_numeric(df["seconds"], errors="coerce"),
    }).dropna()
    out["tokens"] = out["batch_size"] * out["tree_tokens"]
    return out.groupby(["batch_size", "tree_tokens", "tokens"], as_index=False)["time_s"].median()


@dataclass(frozen=True)
class KneeFit:
    """T(b, n) = t0 + per_row * b + per_token * max(0, b*n - knee), roofline/knee.py's model.

    Flat in tokens in flight up to the knee (the forward is bound by reading weights),
    linear past it (bound by compute); per_row is the small cost of each extra row.
    """

    knee: float
    t0: float
    per_token: float
    per_row: float = 0.0
    source: str = "profile"  # "profile": the profiler's own fit; "report": fitted here

    def __call__(self, batch_size, tokens):
        x = np.asarray(tokens, dtype=float)
        return self.t0 + self.per_row * np.asarray(batch_size, dtype=float) + self.per_token * np.maximum(0.0, x - self.knee)

    def describe(self) -> str:
        row = f" + {fmt_seconds(self.per_row)} x b" if self.per_row else ""
        return f"T = {fmt_seconds(self.t0)}{row} + {fmt_seconds(self.per_token)} x max(0, bn - {self.knee:g})"


def fmt_seconds(s: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def profile_fit(p: Profile) -> KneeFit | None:
    """The profiler's own fit of T(b, n), when it recorded one."""
    fit = p.document.knee_fit
    k, t0, tok = number(fit, "knee_tokens"), number(fit, "t0_s"), number(fit, "per_token_s")
    if k is None or t0 is None or tok is None:
        return None
    return KneeFit(k, t0, tok, number(fit, "per_row_s") or 0.0, "profile")


def fit_knee(points: pd.DataFrame, knee: float | None) -> KneeFit | None:
    """Fit the model here (profiles without a recorded fit); no knee given: the best one."""
    if len(points) < 4:
        return None
    x = points["tokens"].to_numpy(float)
    b = points["batch_size"].to_numpy(float) if "batch_size" in points else np.ones_like(x)
    y = points["time_s"].to_numpy(float)

    one_batch = len(np.unique(b)) < 2  # then per_row cannot be told apart from t0

    def solve(k: float) -> tuple[np.ndarray, float]:
        # Linear least squares in (t0, per_row, per_token) for a fixed knee.
        cols = [np.ones_like(x), np.zeros_like(x) if one_batch else b, np.maximum(0.0, x - k)]
        a = np.column_stack(cols)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        return coef, float(np.sum((a @ coef - y) ** 2))

    if knee is None:
        knee = float(min(np.unique(x), key=lambda k: solve(k)[1]))
    coef, _ = solve(float(knee))
    # Negative per-row or per-token costs are noise around zero: report them as zero.
    return KneeFit(float(knee), float(coef[0]), max(float(coef[2]), 0.0), max(float(coef[1]), 0.0), "report")


def knee_tokens(p: Profile) -> float | None:
    return p.document.knee_tokens


def knee_note(p: Profile) -> str:
    """The profiler's caveat on its knee (e.g. censored: the knee lies outside the measured range)."""
    fit = p.document.knee_fit
    if fit.get("censored"):
        rng = fit.get("measured_range")
        where = f" the measured range {rng[0]}..{rng[1]}" if isinstance(rng, list) and len(rng) == 2 else " the measured range"
        return f"censored {fit['censored']}{where}"
    return ""


def topk_policy(p: Profile) -> pd.DataFrame:
    pol = p.document.topk_policy
    if not pol:
        return pd.DataFrame(columns=["batch_size", "top_k", "total_tokens"])
    df = pd.DataFrame(pol)
    for c in ("batch_size", "top_k", "total_tokens"):
        if c not in df.columns:
            df[c] = np.nan
    return df[["batch_size", "top_k", "total_tokens"]].sort_values("batch_size").reset_index(drop=True)


def facts(p: Profile) -> list[tuple[str, str]]:
    """Device facts worth a line in the report (whatever the profile recorded), and the gaps."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(f"{key}.", v)
            elif isinstance(v, list):
                if v and all(isinstance(x, (str, int, float)) for x in v):
                    rows.append((key, ", ".join(map(str, v))[:300]))
            elif v is not None and str(v) != "":
                rows.append((key, str(v)))

    dev = p.doc.get("device")
    if isinstance(dev, dict):
        walk("", {k: v for k, v in dev.items() if k != "unmeasured"})
    for g in p.document.unmeasured:
        rows.append((f"not measured: {g.get('what')}", str(g.get("reason"))))
    return rows
