"""The scaling-law fit tau = alpha * log10(x) + beta, for x = pretraining tokens or draft layers.

Ordinary least squares on log10(x); R^2 is reported so a reader can see when a "law"
fitted to three noisy points means little. Fewer than two distinct x values: no fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LogFit:
    alpha: float
    beta: float
    r2: float
    n: int

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
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    # All y equal: the line fits exactly (alpha ~ 0), so R^2 is 1 by convention.
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return LogFit(alpha=float(alpha), beta=float(beta), r2=r2, n=int(len(x)))
