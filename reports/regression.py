"""The sweep's regression figures and their comparison with a committed baseline.

The figures, keyed by (method, dataset, batch size, top_k setting):

- tau at temperature 0. Greedy decoding is deterministic for given draft weights and given
  kernels, so when both match the baseline's (the same `draft_hash`, the same numerics:
  architecture, torch build, ATen's CPU kernel level, dtype) tau must not drop at all: that
  checks the engine. Drafts retrained on another machine differ in the last bits, and so do
  other kernels; then each figure may drop by TAU_TOLERANCE, and tau pooled over the datasets
  (per method, batch size and top_k) by TAU_POOLED_TOLERANCE. Those bounds are about three
  standard deviations of what retraining alone moves (9% a figure, so 9%/sqrt(6) pooled). The
  three default drafts retrained on a 2-core AMX Xeon, against the baseline's from an
  AVX512-BF16 EPYC (bf16, the bench's sweep, the 36 figures whose tree is the same): single
  figures moved by -14% to +24% (mean +4%, standard deviation 9%: a figure is tau over about 40
  verify steps of 4 prompts), tau pooled over the six datasets by 0% to +7% at top_k 4.
  (EAGLE-2 retrained under AVX2 kernels on the EPYC, fp32: -6.2% to +6.8%, pooled +0.3%.) The
  same weights under either kernel level gave identical tau. The bench's planted shrunk tree
  (depth 2, 6 tokens) drops pooled tau by 5.8% (EAGLE-2) and 8.0% (EAGLE-3), single figures by
  0-17.5%: with retrained drafts the tree figure, next, is what catches it.
- the tree itself: draft nodes per verify step. A draft's tree follows from its top_k, depth
  and size alone (9 for the bench's 10-token tree, on every machine and with any drafts), so
  it is compared exactly everywhere: a commit that builds another tree than the one asked for
  fails here even where retrained drafts leave tau only a loose check. With the bench's
  10-token tree the planted shrunk tree (depth 2, 6 tokens) moved pooled tau by only 0-3%
  (within TAU_POOLED_TOLERANCE), and this figure by 9 -> 5. Prompt lookup (a chain under the
  tree, or the lookup draft) adds the tokens it matches where each step starts, so its figure
  repeats only where the steps do: with the same weights and kernels (drafts retrained on an
  AVX512-BF16 EPYC moved the chained Scylla-3's figures by -3% to +5% against the AMX Xeon's).
- speculative/AR throughput ratio, per (method, batch size, top_k setting) as the
  geometric mean over datasets of each cell's speedup over AR. The bench pairs them
  (`--paired-ar`): AR decodes the cell's own batches alongside it, so a host whose speed
  drifts between cells moves both sides; a ratio over an AR cell timed minutes earlier
  moved by -0.31..+0.19 on a busy 2-core EPYC. A drop larger than the stated tolerance fails.
  The ratio is what the machine decides (a verify of 4 rows x 10 tokens against an AR step of
  4 rows), so it is compared only on the kind of machine and in the precision of the baseline:
  the 10-token tree at batch 4 ran 0.63-0.71x of AR on the AMX Xeon that made the bench's
  baseline and 0.40-0.45x on an AVX512-BF16 EPYC without AMX, both bf16, same code.
  Elsewhere the ratios are printed beside the baseline's, and top_k auto's pricing (next),
  which predicts each ratio from this machine's own timings, is what checks the speed.

- top_k auto's pricing, with no baseline (`pricing`): per batch size, the median over the
  cells that ran a tree of measured / predicted spec/AR (auto_trees.json's prediction beside
  the run's own measurement) must be within PRICING_TOLERANCE of 1.

The baseline also records the sweep's configuration; comparing against a baseline made
with a different configuration is refused (it would compare different experiments).
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.spec import RANDOM_DRAFTS, TRAINING_FREE_DRAFTS
from reports.tables import METHOD_ORDER, auto_prediction_summary, method_labeller
from workloads.errors import ScyllaError

BASELINE_VERSION = 1
TAU_EPSILON = 1e-6
# Relative tau drop allowed when the draft weights or the kernels differ from the baseline's.
TAU_TOLERANCE = 0.25
TAU_POOLED_TOLERANCE = 0.10
DEFAULT_RATIO_TOLERANCE = 0.25
# top_k auto's predicted spec/AR against the measured, in the same run (`pricing`). On the
# regression preset (AMX Xeon, bf16) the median ratio was 0.97 at batch 1 (24 cells) and 1.01 at
# batch 4 (11), with 8 held-out prompts a dataset; 0.93 and 0.93 with 4; and 0.85 at batch 4
# when the pricing took every row of a batch to decode until its end.
PRICING_TOLERANCE = 0.15
PRICING_MIN_CELLS = 6
# CPU features that change which kernels torch runs, hence the bits of a forward pass.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm")


def _key(*parts) -> str:
    return "|".join(str(p) for p in parts)


def _keys(cells: pd.DataFrame, per_dataset: bool) -> pd.Series:
    """Figure keys: method|dataset|b|k, or method|b|k for ratios.

    The tree's depth and size are left out on purpose: the regression being caught may be
    exactly a commit that changes the tree. Only a sweep that ran one method at several
    drafts or tree shapes gets them in its keys, to keep those figures apart. The tree
    `top_k auto` chose is an outcome, not a shape the sweep asked for (it differs by dataset),
    so it never splits a figure.
    """
    base = cells["method"].astype(str)
    if per_dataset:
        base = base + "|" + cells["dataset"].astype(str)
    base = base + "|b" + cells["batch_size"].map(lambda b: str(int(b)) if b == b else "?") + "|k" + cells["top_k_setting"]
    tree = (
        "|d" + cells["depth"].map(lambda d: str(int(d)) if d == d else "-")
        + "|n" + cells["total_tokens"].map(lambda n: str(int(n)) if n == n else "-")
    ).where(cells["top_k_setting"] != "auto", "")
    shape = tree + "|" + cells["draft"].fillna("-").map(lambda d: Path(str(d)).name)
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
    # Which weights each tau was measured with: the same weights are compared exactly.
    hashes = {r.key: weights for r in t0.itertuples() if (weights := _weights(r)) is not None}
    # The tree `auto` chose (priced with this run's measured costs): tau of two different trees
    # is not comparable, and the choice follows timings, which a busy machine moves.
    auto = {r.key: f"top_k={int(r.top_k)},depth={int(r.depth)},total_tokens={int(r.total_tokens)}"
            for r in t0.itertuples() if r.top_k_setting == "auto" and r.top_k == r.top_k and r.total_tokens == r.total_tokens
            and r.depth == r.depth}
    # tau over all datasets of a (method, batch, top_k): emitted tokens over verify steps.
    steps = pd.to_numeric(t0["verify_steps"], errors="coerce")
    weighted = (t0["tau"] * steps).groupby(t0["group"]).sum()
    tau_pooled = {k: float(weighted[k] / n) for k, n in steps.groupby(t0["group"]).sum().items() if n > 0}
    ratio = {}
    for key, g in ok.groupby("group"):
        sp = pd.to_numeric(g["speedup_vs_ar"], errors="coerce").dropna()
        sp = sp[sp > 0]
        if len(sp):
            # Geometric mean: a ratio of ratios, and one slow dataset does not dominate.
            ratio[key] = float(np.exp(np.log(sp).mean()))
    # Draft nodes per verify step (each row's step counts once): the shape of the tree built.
    tree = {r.key: float(r.drafted_nodes / r.verify_steps) for r in t0.itertuples()
            if r.verify_steps == r.verify_steps and r.verify_steps > 0 and r.drafted_nodes == r.drafted_nodes}
    # Cells whose nodes per step follow the text prompt lookup matched (results from before
    # chains were swept have no lookup_tokens column, and no chains).
    chain = pd.to_numeric(t0["lookup_tokens"], errors="coerce").fillna(0) if "lookup_tokens" in t0 else 0
    looked_up = sorted(t0.loc[(chain > 0) | t0["draft"].isin(list(TRAINING_FREE_DRAFTS.values())), "key"])
    # The prompts measured: figures of other prompts (another source of a dataset) do not compare.
    prompts = {str(d): str(c) for d, c in ok.groupby("dataset")["dataset_checksum"].first().items() if c == c} \
        if "dataset_checksum" in ok else {}
    failed = {r.key: str(r.error)[:200] for r in cells[cells["status"] == "failed"].itertuples()}
    return {"tau": tau, "tau_pooled": tau_pooled, "ratio": ratio, "failed": failed, "auto_tree": auto,
            "draft_hash": hashes, "tree": tree, "tree_follows_text": looked_up, "dataset_checksum": prompts}


def machine() -> dict:
    """The machine by what decides the numbers: the instruction sets torch can use, ATen's
    kernel level, the torch build and the core count. The CPU's name is kept for people only:
    it reads "AMD EPYC" on machines of different generations."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "system": platform.system(), "machine": platform.machine(), "cpu": cpu, "python": platform.python_version(),
        "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(), "torch": torch.__version__,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine_kind(mach: dict) -> dict:
    """What decides a spec/AR ratio besides the code and the precision: the CPU, its cores and
    the instruction sets that pick the kernels (`machine()`'s record, or a baseline's)."""
    return {"machine": mach.get("machine"), "cpu": mach.get("cpu"), "cores": mach.get("cores"),
            "isa": mach.get("isa")}


def numerics(mach: dict, config: dict) -> dict:
    """What must match for a greedy decode to repeat bit for bit, given the same draft weights."""
    return {"machine": mach.get("machine"), "torch": mach.get("torch"), "aten_capability": mach.get("aten_capability"),
            "dtype": config.get("dtype")}


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def pricing(predictions: pd.DataFrame) -> Verdict:
    """top_k auto's pricing against the run's own measurements (tables.auto_prediction_table):
    per batch size, the median over the cells that ran a tree of measured / predicted spec/AR
    must be within PRICING_TOLERANCE of 1 (in log terms), with no baseline; fewer than
    PRICING_MIN_CELLS such cells are noted, not checked."""
    v = Verdict()
    for s in auto_prediction_summary(predictions).itertuples():
        ranges = f"; {s.inside} of {s.ranged} within their predicted 10-90% range" if s.ranged else ""
        line = (f"top_k auto at batch {s.batch_size}: measured / predicted spec/AR {s.ratio:.2f} (median of {s.cells} "
                f"cells that ran a tree{ranges})")
        if s.cells < PRICING_MIN_CELLS:
            v.notes.append(f"{line}; not checked, fewer than {PRICING_MIN_CELLS} cells")
        elif abs(math.log(s.ratio)) > math.log(1 + PRICING_TOLERANCE):
            v.failures.append(f"{line}: off by more than {PRICING_TOLERANCE:.0%}, so the step costs or the replayed "
                              "acceptance no longer describe what decoding does")
        else:
            v.notes.append(line)
    return v


def make_baseline(figs: dict, config: dict, tolerance: float, commit: str | None) -> dict:
    return {
        "version": BASELINE_VERSION,
        "config": config,
        "ratio_tolerance": tolerance,
        "git_commit": commit,
        "machine": machine(),
        "tau": dict(sorted(figs["tau"].items())),
        "tau_pooled": dict(sorted(figs.get("tau_pooled", {}).items())),
        "ratio": dict(sorted(figs["ratio"].items())),
        "failed": dict(sorted(figs["failed"].items())),
        "auto_tree": dict(sorted(figs.get("auto_tree", {}).items())),
        "draft_hash": dict(sorted(figs.get("draft_hash", {}).items())),
        "tree": dict(sorted(figs.get("tree", {}).items())),
        "dataset_checksum": dict(sorted(figs.get("dataset_checksum", {}).items())),
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


def check_same_sweep(config: dict, baseline: dict) -> None:
    """Refuses a baseline made with another sweep configuration: it measured another experiment.
    The bench asks before its sweep too, so a mismatch costs seconds, not the sweep."""
    # The dtype is the machine's choice (bf16 where it has bf16 instructions); it decides the
    # numerics, compared in `compare`, not which experiment this is.
    same_sweep = {k: x for k, x in config.items() if k != "dtype"}
    base_sweep = {k: x for k, x in baseline.get("config", {}).items() if k != "dtype"}
    if base_sweep != same_sweep:
        diff = sorted(k for k in set(same_sweep) | set(base_sweep) if same_sweep.get(k) != base_sweep.get(k))
        raise ScyllaError(f"the baseline was made with a different sweep ({', '.join(diff)} differ); "
                          "refresh it with --update-baseline")


def compare(figs: dict, baseline: dict, config: dict, tolerance: float | None = None) -> Verdict:
    """Every failure names its figure: 'tau scylla|gsm8k|b1|k4: 2.310 < baseline 2.410'."""
    v = Verdict()
    check_same_sweep(config, baseline)
    other_prompts = sorted(d for d, c in baseline.get("dataset_checksum", {}).items()
                           if figs.get("dataset_checksum", {}).get(d) not in (None, c))
    if other_prompts:
        raise ScyllaError(f"the baseline measured other prompts for {', '.join(other_prompts)} (another dataset file "
                          "or package version); refresh it with --update-baseline")
    here, there = machine(), baseline.get("machine", {})
    same_numerics = numerics(here, config) == numerics(there, baseline.get("config", {}))
    if not same_numerics:
        differ = {k: (a, b) for k, a, b in _pairs(numerics(there, baseline.get("config", {})), numerics(here, config))}
        v.notes.append("the baseline ran other kernels (" + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
                       + f"): tau is compared within {TAU_TOLERANCE:.0%}, not exactly")
    if there.get("isa") is not None and there.get("isa") != here["isa"]:
        v.notes.append(f"baseline machine: {', '.join(there['isa']) or 'no listed ISA'}, {there.get('cores')} cores; "
                       f"this one: {', '.join(here['isa']) or 'no listed ISA'}, {here['cores']} cores")
    _compare_tau(v, figs, baseline, same_numerics)
    _compare_trees(v, figs, baseline, same_numerics)
    tol = baseline.get("ratio_tolerance", DEFAULT_RATIO_TOLERANCE) if tolerance is None else tolerance
    _compare_ratios(v, figs, baseline, config, tol, here, there)
    for key, err in sorted(figs["failed"].items()):
        if key in baseline.get("failed", {}):
            v.notes.append(f"cell {key} failed, as it did in the baseline: {err}")
        elif key not in baseline.get("tau", {}):  # (a failed baseline figure is reported with tau)
            v.failures.append(f"cell {key} failed: {err}")
    new = sorted(set(figs["tau"]) - set(baseline.get("tau", {})))
    if new:
        v.notes.append(f"{len(new)} figures not in the baseline (ignored until --update-baseline): {', '.join(new[:5])}")
    return v


def _compare_tau(v: Verdict, figs: dict, baseline: dict, same_numerics: bool) -> None:
    """tau per cell: exact with the baseline's draft weights and kernels, else within TAU_TOLERANCE
    and pooled over datasets within TAU_POOLED_TOLERANCE; a cell whose auto tree moved is skipped."""
    moved: dict[str, str] = {}  # figure -> how its auto tree changed
    exact = loose = 0
    for key, base in sorted(baseline.get("tau", {}).items()):
        now = figs["tau"].get(key)
        if now is not None and (change := _auto_tree_change(key, figs, baseline)):
            moved[key] = change
            continue
        if now is None:
            why = figs["failed"].get(key)
            v.failures.append(f"tau {key}: missing from this run" + (f" (cell failed: {why})" if why else ""))
        elif same_numerics and _same_weights(key, figs, baseline):
            exact += 1
            if now < base - TAU_EPSILON:
                v.failures.append(f"tau {key} at T=0: {now:.3f} < baseline {base:.3f} (same draft weights, same "
                                  "kernels: tau must not drop)")
        else:
            loose += 1
            if now < base * (1 - TAU_TOLERANCE):
                v.failures.append(f"tau {key} at T=0: {now:.3f} < baseline {base:.3f} by {(1 - now / base) * 100:.0f}% "
                                  f"(other draft weights or kernels: tolerance {TAU_TOLERANCE:.0%})")
    if loose:
        v.notes.append(f"tau: {exact} figures compared exactly (same draft weights and kernels), {loose} within "
                       f"{TAU_TOLERANCE:.0%}, and pooled over datasets within {TAU_POOLED_TOLERANCE:.0%} "
                       "(drafts retrained here, or other kernels)")
        moved_groups = {_group(key) for key in moved}
        for key, base in sorted(baseline.get("tau_pooled", {}).items()):
            now = figs.get("tau_pooled", {}).get(key)
            if now is not None and key not in moved_groups and now < base * (1 - TAU_POOLED_TOLERANCE):
                v.failures.append(f"tau {key} pooled over datasets at T=0: {now:.3f} < baseline {base:.3f} by "
                                  f"{(1 - now / base) * 100:.1f}% (tolerance {TAU_POOLED_TOLERANCE:.0%})")
    if moved:
        shown = [f"{key} ({change})" for key, change in list(moved.items())[:4]]
        v.notes.append(f"top_k auto chose another tree than in the baseline (its measured costs moved), so "
                       f"tau is not compared for: {', '.join(shown)}" + (f" and {len(moved) - 4} more" if len(moved) > 4 else ""))


def _compare_trees(v: Verdict, figs: dict, baseline: dict, same_numerics: bool) -> None:
    """Draft nodes per verify step: exact, except prompt lookup's under other weights or kernels."""
    follows_text, unrepeated = set(figs.get("tree_follows_text", ())), []
    for key, base in sorted(baseline.get("tree", {}).items()):
        now = figs.get("tree", {}).get(key)
        if now is None or _auto_tree_change(key, figs, baseline):
            continue
        if key in follows_text and not (same_numerics and _same_weights(key, figs, baseline)):
            unrepeated.append(key)
        elif abs(now - base) > TAU_EPSILON:
            v.failures.append(f"tree {key}: {now:.2f} draft nodes per step, baseline {base:.2f} (the engine built "
                              "another tree than the sweep asked for)")
    if unrepeated:
        v.notes.append(f"tree: {len(unrepeated)} figures of prompt lookup not compared (the tokens a lookup adds "
                       "follow the text matched where each step starts, which other weights or kernels move): "
                       + ", ".join(unrepeated[:4]) + (f" and {len(unrepeated) - 4} more" if len(unrepeated) > 4 else ""))


def _compare_ratios(v: Verdict, figs: dict, baseline: dict, config: dict, tol: float, here: dict, there: dict) -> None:
    """spec/AR per cell at most `tol` below the baseline's, in the same precision on the same kind of machine."""
    # spec/AR depends on the precision as much as on the engine (a bf16 AR step is slow on a CPU
    # whose few-row fp32 kernel streams the weights at memory speed, so bf16 ratios run higher):
    # across precisions the ratios are not the same figure.
    base_dtype, dtype = baseline.get("config", {}).get("dtype"), config.get("dtype")
    ratios = baseline.get("ratio", {})
    other_kind = _pairs(machine_kind(there), machine_kind(here))
    if base_dtype != dtype:
        v.notes.append(f"the baseline decoded in {base_dtype}, this run in {dtype}: spec/AR ratios are not compared "
                       "(refresh the baseline with --update-baseline)")
        return
    if other_kind:
        side_by_side = ", ".join(f"{key} {figs['ratio'][key]:.2f}x ({base:.2f}x)" for key, base in sorted(ratios.items())
                                 if key in figs["ratio"])
        v.notes.append("spec/AR ratios are not compared: the baseline ran on another kind of machine ("
                       + "; ".join(_kind_change(k, a, b) for k, a, b in other_kind) + "); here (baseline): "
                       + side_by_side + " (refresh the baseline here with --update-baseline to check them)")
        return
    for key, base in sorted(ratios.items()):
        now = figs["ratio"].get(key)
        if now is None:
            v.failures.append(f"throughput ratio {key}: missing from this run")
        elif now < base * (1 - tol):
            v.failures.append(f"throughput ratio {key} (spec/AR): {now:.3f}x < baseline {base:.3f}x "
                              f"by {(1 - now / base) * 100:.0f}% (tolerance {tol * 100:.0f}%)")


def _kind_change(key: str, was, now) -> str:
    if key == "isa" and isinstance(was, list) and isinstance(now, list):
        return "isa " + " ".join([f"-{f}" for f in was if f not in now] + [f"+{f}" for f in now if f not in was])
    return f"{key} {was} -> {now}"


def _group(key: str) -> str:
    """A per-dataset figure's key -> its pooled group's: method|dataset|b|k -> method|b|k."""
    parts = key.split("|")
    return "|".join(parts[:1] + parts[2:])


def _weights(row) -> str | None:
    """What identifies a draft's weights: the checkpoint's hash, or the spec of a draft whose
    weights follow from the spec alone (oracle, lookup, random:<method> from a fixed seed)."""
    if isinstance(getattr(row, "draft_hash", None), str):
        return row.draft_hash
    draft = getattr(row, "draft", None)
    if isinstance(draft, str) and (draft in ("oracle", *TRAINING_FREE_DRAFTS) or draft in RANDOM_DRAFTS):
        return draft
    return None


def _auto_tree_change(key: str, figs: dict, baseline: dict) -> str | None:
    """'was -> now' where top_k auto chose another tree than the baseline's (its measured costs moved)."""
    was, now = baseline.get("auto_tree", {}).get(key), figs.get("auto_tree", {}).get(key)
    return f"{was} -> {now}" if was and now and was != now else None


def _same_weights(key: str, figs: dict, baseline: dict) -> bool:
    mine, theirs = figs.get("draft_hash", {}).get(key), baseline.get("draft_hash", {}).get(key)
    return mine is not None and mine == theirs


def _pairs(a: dict, b: dict):
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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
    label = method_labeller(ok)
    w = max(len("method"), *(len(label(r[0])) for r in rows))
    head = f"{'method':<{w}} {'batch':>5} {'top_k':>5} {'cells':>5} {'tau':>6} {'tok/s':>8} {'spec/AR':>8}"
    lines = [head, "-" * len(head)]
    for m, b, s, n, tau, tps, sp in rows:
        sp_txt = "" if math.isnan(sp) else f"{sp:.2f}x"
        lines.append(f"{label(m):<{w}} {b:>5} {s:>5} {n:>5} {tau:>6.2f} {tps:>8.1f} {sp_txt:>8}")
    return "\n".join(lines)
