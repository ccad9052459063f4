"""The sweep's regression figures and their comparison with a committed baseline.

Two kinds of figure, keyed by (method, dataset, batch size, top_k setting):

- tau at temperature 0. Greedy decoding is deterministic for a given commit and machine
  type, so tau must not drop at all (a tiny epsilon absorbs float printing only).
- speculative/AR throughput ratio, per (method, batch size, top_k setting) as the
  geometric mean over datasets of each cell's speedup over its AR partner. Both sides
  are timed in the same run, which cancels most machine load, but not all of it on a
  shared 2-core box: a drop larger than the stated tolerance fails.

The baseline also records the sweep's configuration; comparing against a baseline made
with a different configuration is refused (it would compare different experiments).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.tables import METHOD_ORDER
from workloads.errors import ScyllaError

BASELINE_VERSION = 1
TAU_EPSILON = 1e-6
DEFAULT_RATIO_TOLERANCE = 0.25


def _key(*parts) -> str:
    return "|".join(str(p) for p in parts)


def _keys(cells: pd.DataFrame, per_dataset: bool) -> pd.Series:
    """Figure keys: method|dataset|b|k, or method|b|k for ratios.

    The tree's depth and size are left out on purpose: the regression being caught may be
    exactly a commit that changes the tree. Only a sweep that ran one method at several
    drafts or tree shapes gets them in its keys, to keep those figures apart.
    """
    base = cells["method"].astype(str)
    if per_dataset:
        base = base + "|" + cells["dataset"].astype(str)
    base = base + "|b" + cells["batch_size"].map(lambda b: str(int(b)) if b == b else "?") + "|k" + cells["top_k_setting"]
    shape = (
        "|d" + cells["depth"].map(lambda d: str(int(d)) if d == d else "-")
        + "|n" + cells["total_tokens"].map(lambda n: str(int(n)) if n == n else "-")
        + "|" + cells["draft"].fillna("-").map(lambda d: Path(str(d)).name)
    )
    ambiguous = shape.groupby(base).transform("nunique") > 1
    return base.where(~ambiguous, base + shape)


def figures(cells: pd.DataFrame) -> dict[str, dict]:
    """{"tau": {key: value}, "ratio": {key: value}, "failed": {key: error}} from a results frame."""
    cells = cells[cells["method"] != "ar"].copy()
    cells["top_k_setting"] = cells["top_k_setting"].fillna("-").astype(str)
    cells["key"] = _keys(cells, per_dataset=True)
    cells["group"] = _keys(cells, per_dataset=False)
    ok = cells[cells["status"] == "ok"]
    t0 = ok[ok["temperature"].fillna(0) == 0]
    tau = {r.key: float(r.tau) for r in t0.itertuples() if r.tau == r.tau}
    # The tree `auto` chose (from this run's profile): tau of two different trees is not
    # comparable, and the choice follows the measured knee, which a busy machine moves.
    auto = {r.key: f"top_k={int(r.top_k)},total_tokens={int(r.total_tokens)}"
            for r in t0.itertuples() if r.top_k_setting == "auto" and r.top_k == r.top_k and r.total_tokens == r.total_tokens}
    ratio = {}
    for key, g in ok.groupby("group"):
        sp = pd.to_numeric(g["speedup_vs_ar"], errors="coerce").dropna()
        sp = sp[sp > 0]
        if len(sp):
            # Geometric mean: a ratio of ratios, and one slow dataset does not dominate.
            ratio[key] = float(np.exp(np.log(sp).mean()))
    failed = {r.key: str(r.error)[:200] for r in cells[cells["status"] == "failed"].itertuples()}
    return {"tau": tau, "ratio": ratio, "failed": failed, "auto_tree": auto}


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"system": platform.system(), "machine": platform.machine(), "cpu": cpu, "python": platform.python_version()}


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def make_baseline(figs: dict, config: dict, tolerance: float, commit: str | None) -> dict:
    return {
        "version": BASELINE_VERSION,
        "config": config,
        "ratio_tolerance": tolerance,
        "git_commit": commit,
        "machine": machine(),
        "tau": dict(sorted(figs["tau"].items())),
        "ratio": dict(sorted(figs["ratio"].items())),
        "failed": dict(sorted(figs["failed"].items())),
        "auto_tree": dict(sorted(figs.get("auto_tree", {}).items())),
    }


def read_baseline(path: Path) -> dict:
    if not path.is_file():
        raise ScyllaError(f"no baseline at {path}; create one with `nox -s bench -- --update-baseline`")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ScyllaError(f"cannot read baseline {path}: {' '.join(str(err).split())}") from None
    if doc.get("version") != BASELINE_VERSION:
        raise ScyllaError(f"{path}: baseline version {doc.get('version')} is not {BASELINE_VERSION}; refresh it with --update-baseline")
    return doc


def compare(figs: dict, baseline: dict, config: dict, tolerance: float | None = None) -> Verdict:
    """Every failure names its figure: 'tau scylla|gsm8k|b1|k4: 2.310 < baseline 2.410'."""
    v = Verdict()
    if baseline.get("config") != config:
        diff = sorted(k for k in set(config) | set(baseline.get("config", {}))
                      if config.get(k) != baseline.get("config", {}).get(k))
        raise ScyllaError(f"the baseline was made with a different sweep ({', '.join(diff)} differ); "
                          "refresh it with --update-baseline")
    tol = baseline.get("ratio_tolerance", DEFAULT_RATIO_TOLERANCE) if tolerance is None else tolerance
    if baseline.get("machine", {}).get("cpu") != machine()["cpu"]:
        v.notes.append(f"baseline measured on {baseline.get('machine', {}).get('cpu')!r}, this is {machine()['cpu']!r}: "
                       "tau is only comparable on the same machine type")
    moved = []
    for key, base in sorted(baseline.get("tau", {}).items()):
        now = figs["tau"].get(key)
        was_tree, now_tree = baseline.get("auto_tree", {}).get(key), figs.get("auto_tree", {}).get(key)
        if now is not None and was_tree and now_tree and was_tree != now_tree:
            moved.append(f"{key} ({was_tree} -> {now_tree})")
            continue
        if now is None:
            why = figs["failed"].get(key)
            v.failures.append(f"tau {key}: missing from this run" + (f" (cell failed: {why})" if why else ""))
        elif now < base - TAU_EPSILON:
            v.failures.append(f"tau {key} at T=0: {now:.3f} < baseline {base:.3f} (tau must not drop)")
    if moved:
        v.notes.append(f"top_k auto chose another tree than in the baseline (the profile's knee moved), so "
                       f"tau is not compared for: {', '.join(moved[:4])}" + (f" and {len(moved) - 4} more" if len(moved) > 4 else ""))
    for key, base in sorted(baseline.get("ratio", {}).items()):
        now = figs["ratio"].get(key)
        if now is None:
            v.failures.append(f"throughput ratio {key}: missing from this run")
        elif now < base * (1 - tol):
            v.failures.append(f"throughput ratio {key} (spec/AR): {now:.3f}x < baseline {base:.3f}x "
                              f"by {(1 - now / base) * 100:.0f}% (tolerance {tol * 100:.0f}%)")
    for key, err in sorted(figs["failed"].items()):
        if key in baseline.get("failed", {}):
            v.notes.append(f"cell {key} failed, as it did in the baseline: {err}")
        elif key not in baseline.get("tau", {}):  # (a failed baseline figure is reported above)
            v.failures.append(f"cell {key} failed: {err}")
    new = sorted(set(figs["tau"]) - set(baseline.get("tau", {})))
    if new:
        v.notes.append(f"{len(new)} figures not in the baseline (ignored until --update-baseline): {', '.join(new[:5])}")
    return v


def summary_table(cells: pd.DataFrame) -> str:
    """The short table `nox -s bench` prints: per method, batch and top_k, over datasets."""
    ok = cells[cells["status"] == "ok"].copy()
    if ok.empty:
        return "(no finished cells)"
    ok["top_k_setting"] = ok["top_k_setting"].fillna("-").astype(str)
    rows = []
    for (m, b, s), g in ok.groupby(["method", "batch_size", "top_k_setting"], sort=False):
        em, st = g["emitted_tokens"].sum(), g["verify_steps"].sum()
        sp = pd.to_numeric(g["speedup_vs_ar"], errors="coerce").dropna()
        rows.append((m, int(b), s, len(g), em / st if st else float("nan"), g["tokens_per_s"].mean(),
                     float(np.exp(np.log(sp[sp > 0]).mean())) if (sp > 0).any() else (1.0 if m == "ar" else float("nan"))))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (order.get(r[0], 9), r[0], r[1], (r[2] == "auto", r[2])))
    head = f"{'method':<8} {'batch':>5} {'top_k':>5} {'cells':>5} {'tau':>6} {'tok/s':>8} {'spec/AR':>8}"
    lines = [head, "-" * len(head)]
    for m, b, s, n, tau, tps, sp in rows:
        sp_txt = "" if math.isnan(sp) else f"{sp:.2f}x"
        lines.append(f"{m:<8} {b:>5} {s:>5} {n:>5} {tau:>6.2f} {tps:>8.1f} {sp_txt:>8}")
    return "\n".join(lines)
