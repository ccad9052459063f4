"""tau over several cells together (a series point, a dataset, a method): the ratio of their
totals, as a cell's own tau is (harness/metrics.py); torch-free, so the report's tables load
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
