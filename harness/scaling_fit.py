"""The scaling-law fits: tau = alpha * log10(x) + beta, for x = pretraining tokens or draft
layers (Theorems 1.1, 1.2), and log10 k* = alpha * log10(b) + beta, the optimal top_k's power
law in the batch size (Theorem 1.3).

Ordinary least squares on log10(x). R^2 and a 95% confidence interval on the slope are
reported, so a reader can see when a "law" fitted to a few noisy points means little: with
n points the interval uses Student's t with n - 2 degrees of freedom (no interval from two
points, which a line always fits). Fewer than two distinct x values: no fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom; between entries the
# next smaller one is used, which widens the interval slightly rather than narrowing it.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T975[max(k for k in T975 if k <= df)]


@dataclass(frozen=True)
class LogFit:
    alpha: float  # slope per decade of x
    beta: float
    r2: float
    n: int  # points fitted
    alpha_ci95: float  # half-width of the slope's 95% interval; nan from two points

    @property
    def alpha_low(self) -> float:
        return self.alpha - self.alpha_ci95

    @property
    def alpha_high(self) -> float:
        return self.alpha + self.alpha_ci95

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.alpha * np.log10(np.asarray(x, dtype=float)) + self.beta


def fit_log10(x, y) -> LogFit | None:
    """Fit y = alpha*log10(x) + beta. Points with x <= 0 or non-finite values are dropped."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 2:
        return None
    lx = np.log10(x)
    alpha, beta = np.polyfit(lx, y, 1)
    resid = y - (alpha * lx + beta)
    sse = float(np.sum(resid**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    # All y equal: the line fits exactly (alpha ~ 0), so R^2 is 1 by convention.
    r2 = 1.0 - sse / ss_tot if ss_tot > 0 else 1.0
    n = len(x)
    half = math.nan
    if n > 2:
        se = math.sqrt(sse / (n - 2) / float(np.sum((lx - lx.mean()) ** 2)))
        half = t975(n - 2) * se
    return LogFit(alpha=float(alpha), beta=float(beta), r2=r2, n=n, alpha_ci95=half)


def fit_loglog(x, y) -> LogFit | None:
    """Fit log10 y = alpha*log10(x) + beta (alpha: the exponent of a power law y ~ x^alpha).
    Points with y <= 0 are dropped: at a batch size where no tree beats AR, k* is undefined."""
    y = np.asarray(y, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fit_log10(x, np.where(y > 0, np.log10(y), np.nan))


def claim_verdict(fit: LogFit | None, sign: int = 1) -> str:
    """Whether `fit` shows a scaling law as the paper states it: a slope of sign `sign` whose 95%
    interval excludes 0, on a straight line (R^2 >= 0.9; a third-party summary reports ~0.99)."""
    if fit is None:
        return "no fit"
    word, other = ("positive", "negative") if sign > 0 else ("negative", "positive")
    slope = sign * fit.alpha
    if math.isnan(fit.alpha_ci95):
        return f"slope {word}, untested (2 points)" if slope > 0 else f"slope not {word} (2 points)"
    if slope - fit.alpha_ci95 > 0:
        return f"log-linear, {word} slope" if fit.r2 >= 0.9 else f"{word} slope, not a straight line (R^2 {fit.r2:.2f})"
    if slope + fit.alpha_ci95 < 0:
        return f"against the claim: a {other} slope (95% interval excludes 0)"
    return f"slope not shown {word} (95% interval includes 0)"
