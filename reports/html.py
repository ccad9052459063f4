"""Assemble the report: sections of tables and figures -> one self-contained HTML file.

Self-contained means the file makes no request when opened: CSS is inline, figures are
SVG in data: URIs, there is no script and no external font. Layout is one column at most
1100 px wide, so a laptop screen never scrolls sideways; wide tables scroll inside their
own box instead of widening the page.

Every table carries `data-table="<id>"`, and rows of the cells table carry
`data-cell-id`, so a browser test can read the numbers back and compare them with the
Parquet file they came from.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from harness.scaling_fit import claim_verdict, fit_loglog
from reports import figures, profiles, tables
from reports.load import Profile, Results
from reports.published import SCYLLA_CITATION
from reports.tables import dataset_label
from scylla_impl.methods import BASELINES

Label = Callable[[str], str]  # a method's name -> how the report prints it (tables.method_labeller)

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d1d1f;background:#fff;margin:0;line-height:1.45;font-size:15px}
main{max-width:1100px;margin:0 auto;padding:24px 20px 60px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}
p.sub{color:#555;margin:0 0 16px}
nav{font-size:14px;margin:10px 0 18px} nav a{margin-right:14px;color:#2859a8;text-decoration:none}
.glance{background:#f5f7fa;border:1px solid #dde3ea;border-radius:6px;padding:10px 16px}
.glance li{margin:3px 0}
.note{color:#555;font-size:13px;margin:6px 0 2px}
.warn{background:#fff6e5;border:1px solid #f0d9a8;border-radius:6px;padding:8px 12px;font-size:14px}
.ok{color:#2e7d32;font-weight:600} .bad{color:#b3261e;font-weight:600}
figure{margin:12px 0 18px} figure img{width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#444;margin-top:4px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#fafafa;font-weight:600}
td.num,th.num{text-align:right;white-space:nowrap}
td.wrap{overflow-wrap:anywhere;max-width:46em}
tr.published td{color:#555}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""


@dataclass(frozen=True)
class Col:
    key: str
    header: str
    fmt: Callable[[object], str] = str
    numeric: bool = False
    wrap: bool = False


def _missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return isinstance(v, float) and math.isnan(v)
    except TypeError:
        return False


def fnum(digits: int) -> Callable[[object], str]:
    return lambda v: "" if _missing(v) else f"{float(v):.{digits}f}"


def fint(v) -> str:
    return "" if _missing(v) else f"{int(v)}"


def ftext(v) -> str:
    return "" if _missing(v) else str(v)


def render_table(rows: pd.DataFrame, cols: Sequence[Col], table_id: str, caption: str = "",
                 row_attrs: Callable[[pd.Series], dict[str, str]] | None = None,
                 row_class: Callable[[pd.Series], str] | None = None) -> str:
    head = "".join(f'<th class="{"num" if c.numeric else ""}">{html.escape(c.header)}</th>' for c in cols)
    body = []
    for _, r in rows.iterrows():
        attrs = "".join(f' {k}="{html.escape(str(v))}"' for k, v in (row_attrs(r) if row_attrs else {}).items())
        cls = f' class="{row_class(r)}"' if row_class and row_class(r) else ""
        tds = []
        for c in cols:
            v = r.get(c.key)
            text = "" if _missing(v) else c.fmt(v)
            klass = "num" if c.numeric else "wrap" if c.wrap else ""
            tds.append(f'<td class="{klass}" data-col="{html.escape(c.key)}">{html.escape(text)}</td>')
        body.append(f"<tr{attrs}{cls}>{''.join(tds)}</tr>")
    # The caption goes above the table as a paragraph: a <caption> would wrap to the
    # table's width, which for narrow tables squeezes a sentence into a column.
    cap = f'<p class="note">{html.escape(caption)}</p>' if caption else ""
    return (f'{cap}<div class="scroll"><table data-table="{html.escape(table_id)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def kv_table(pairs: list[tuple[str, str]], table_id: str) -> str:
    df = pd.DataFrame(pairs, columns=["key", "value"])
    return render_table(df, [Col("key", "", ftext), Col("value", "", ftext, wrap=True)], table_id)


def figure(svg: str | None, fig_id: str, alt: str, caption: str, absent: str) -> str:
    if not svg:
        return f'<p class="note" data-figure-absent="{html.escape(fig_id)}">{html.escape(absent)}</p>'
    data = base64.b64encode(svg.encode()).decode()
    return (f'<figure data-figure="{html.escape(fig_id)}"><img src="data:image/svg+xml;base64,{data}" '
            f'alt="{html.escape(alt)}"><figcaption>{html.escape(caption)}</figcaption></figure>')


# --------------------------------------------------------------------------- sections


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _glance(res: Results, h: tables.Headline, tau: pd.DataFrame, claims: pd.DataFrame,
            tt: pd.DataFrame, loss: pd.DataFrame, method_label: Label) -> str:
    items = [f"Compared at the headline configuration: {html.escape(h.describe())}."]
    if "all" in tau.index:
        parts = [f"{html.escape(method_label(m))} {tau.loc['all', m]:.2f}" for m in tau.columns
                 if not pd.isna(tau.loc["all", m])]
        items.append("tau over all datasets: " + ", ".join(parts) + ".")
    for base in BASELINES:
        c = claims[(claims["baseline"] == base) & (claims["dataset"] == "all")] if len(claims) else claims
        if len(c):
            r = c.iloc[0]
            cls = "ok" if r["verdict"] == "within claim" else "bad"
            items.append(f"Scylla vs {html.escape(method_label(base))}: measured {r['delta']:+.2f} tau; the paper "
                         f"reports {html.escape(r['claim'])} (<span class=\"{cls}\">{html.escape(r['verdict'])}</span>).")
    spec = tt[tt["method"] != "ar"] if len(tt) else tt
    if len(spec):
        best = spec.loc[spec["speedup"].idxmax()]
        items.append(f"Best speedup: {best['speedup']:.2f}x ({html.escape(method_label(best['method']))}, batch "
                     f"{html.escape(str(best['batch_size']))}, top_k {html.escape(str(best['top_k_setting']))}).")
    if len(loss):
        bad = int(loss["mismatched"].sum())
        good = int(loss["passed"].sum())
        cls = "ok" if bad == 0 else "bad"
        items.append(f'Lossless check at T=0: <span class="{cls}">{good} passed, {bad} mismatched</span>.')
    nf = len(res.failed)
    items.append(f'Failed cells: <span class="{"bad" if nf else "ok"}">{nf}</span>'
                 + (f"; pruned combinations: {len(res.pruned)}" if len(res.pruned) else "") + ".")
    return '<div class="glance"><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


def _metadata(res: Results, profs: list[Profile]) -> str:
    out = [kv_table(tables.metadata_rows(res.cells, res.dirs), "metadata")]
    ds = tables.dataset_sources(res.cells)
    out.append("<h3>Datasets</h3>" + render_table(ds, [
        Col("dataset", "dataset", dataset_label), Col("source", "source", wrap=True),
        Col("checksum", "checksum", wrap=True), Col("prompts", "prompts"), Col("cells", "cells", fint, True),
        Col("truncated", "prompts truncated"),
    ], "datasets"))
    pv = tables.package_versions(res.cells)
    if len(pv):
        out.append("<details><summary>Package versions</summary>" + render_table(
            pv, [Col("package", "package"), Col("version", "version", wrap=True)], "packages") + "</details>")
    if res.missing_columns:
        out.append(f'<p class="warn">These columns were missing from the results and are shown as empty: '
                   f"{html.escape(', '.join(res.missing_columns))}.</p>")
    if not profs:
        out.append('<p class="note">No roofline profile given (use --profile DIR).</p>')
    return "".join(out)


def _roofline(profs: list[Profile]) -> str:
    if not profs:
        return '<p class="note">No roofline profile was given, so there is no roofline or verify knee to show. ' \
               "Run <code>scylla profile --quick --out DIR</code> and pass <code>--profile DIR</code>.</p>"
    ceil = [profiles.ceilings(p) for p in profs]
    pts = [profiles.knee_points(p) for p in profs]
    fits = [profiles.profile_fit(p) or profiles.fit_knee(pt, profiles.knee_tokens(p)) for p, pt in zip(profs, pts)]
    rows = []

    def si(v, unit):
        return "not measured" if v is None else figures.fmt_si(v, unit)

    all_dtypes = sorted({d for c in ceil for d in c.compute} | {d for c in ceil for d in c.spec_compute})
    rows.append(("peak bandwidth (measured)", [si(c.bandwidth, "B/s") + (f" ({c.bandwidth_kernel})" if c.bandwidth_kernel else "") for c in ceil]))
    rows.append(("peak bandwidth (spec sheet)", [si(c.spec_bandwidth, "B/s") if c.spec_bandwidth else "n/a" for c in ceil]))
    for dt in all_dtypes:
        rows.append((f"{dt} FLOP/s (measured)", [si(c.compute.get(dt), "FLOP/s") for c in ceil]))
        if any(dt in c.spec_compute for c in ceil):
            rows.append((f"{dt} FLOP/s (spec sheet)", [si(c.spec_compute.get(dt), "FLOP/s") if dt in c.spec_compute else "n/a" for c in ceil]))
    rows.append(("I_crit measured (FLOP/byte)", [(f"{c.i_crit:.3g}" + (f" ({c.i_crit_dtype})" if c.i_crit_dtype else "")) if c.i_crit else "not measured" for c in ceil]))
    rows.append(("I_crit spec sheet (FLOP/byte)", [f"{c.i_crit_spec:.3g}" if c.i_crit_spec else "n/a" for c in ceil]))
    rows.append(("verify knee (tokens in flight)", [
        (f"{profiles.knee_tokens(p):g}" + (f" ({profiles.knee_note(p)})" if profiles.knee_note(p) else ""))
        if profiles.knee_tokens(p) else "not measured" for p in profs]))
    rows.append(("fitted T(b, n)", [f"{f.describe()} ({'profiler' if f.source == 'profile' else 'fitted by the report'})" if f else "too few points" for f in fits]))
    names = [p.name for p in profs]
    df = pd.DataFrame([[k, *v] for k, v in rows], columns=["quantity", *names])
    cols = [Col("quantity", "")] + [Col(n, n, wrap=True) for n in names]
    out = [render_table(df, cols, "roofline", "Measured ceilings beside the spec sheet's; a spec number is never used in place of a measured one.")]
    out.append(figure(figures.roofline(profs), "roofline", "Roofline: attainable FLOP/s against arithmetic intensity",
                      "Roofline per device: measured bandwidth slope and compute roofs per dtype (solid), spec sheet (dashed), ridge I_crit (dotted).",
                      "No roofline: the profiles lack measured bandwidth or compute peaks."))
    out.append(figure(figures.knee(profs, pts, fits), "knee", "Verify forward time against tokens in flight",
                      "Verify knee: one target forward over b rows x n tree tokens on a cached prefix. Time stays flat up to the knee, then grows; the line is the fitted T(b, n).",
                      "No verify-knee measurements in the profiles."))
    pol = [(p.name, profiles.topk_policy(p)) for p in profs]
    pol = [(n, d) for n, d in pol if len(d)]
    for name, d in pol:
        out.append(render_table(d, [Col("batch_size", "batch", fint, True), Col("top_k", "top_k", fint, True),
                                    Col("total_tokens", "total_tokens", fint, True)],
                                "policy", f"top_k = auto policy of {name}: the widest tree whose b x total_tokens stays at or under the knee."))
    for p in profs:
        f = profiles.facts(p)
        if f:
            out.append(f"<details><summary>Device facts: {html.escape(p.name)}</summary>{kv_table(f, 'device')}</details>")
    return "".join(out)


def _acceptance(h: tables.Headline, tau: pd.DataFrame, claims: pd.DataFrame, pos: pd.DataFrame,
                method_label: Label) -> str:
    cap = f"tau = emitted tokens / verify steps, pooled over the cells of each dataset at {h.describe()}."
    # Folder names only: the full paths are in the cells table and the results file.
    drafts = "; ".join(f"{method_label(m)}: {d.rstrip('/').rsplit('/', 1)[-1] if d else 'none'}" for m, d in h.drafts.items())
    out = [figure(figures.tau_bars(tau, method_label), "tau", "tau per dataset and method", cap + (f" Drafts: {drafts}." if drafts else ""),
                  "No speculative cells at the headline configuration.")]
    df = tau.reset_index()
    cols = [Col("dataset", "dataset", lambda d: "all datasets" if d == "all" else dataset_label(d))]
    cols += [Col(m, method_label(m), fnum(2), True) for m in tau.columns]
    out.append(render_table(df, cols, "tau", "The same numbers: tau per dataset (rows) and method (columns)."))
    if len(claims):
        out.append("<h3>Scylla against the paper's claimed deltas (T=0)</h3>")
        # One row per dataset, one column pair per baseline: compact enough to read at a glance.
        wide = claims.pivot(index="dataset", columns="baseline", values=["delta", "verdict", "baseline_tau"])
        rows = pd.DataFrame({"dataset": wide.index,
                             "scylla": [tau.loc[d, "scylla"] for d in wide.index]}).set_index("dataset", drop=False)
        cols = [Col("dataset", "dataset", lambda d: "all datasets" if d == "all" else dataset_label(d)),
                Col("scylla", "Scylla tau", fnum(2), True)]
        for base in [b for b in BASELINES if b in set(claims["baseline"])]:
            claim = claims.loc[claims["baseline"] == base, "claim"].iloc[0]
            rows[f"{base}_tau"] = wide[("baseline_tau", base)]
            rows[f"{base}_delta"] = [
                "" if pd.isna(dl) else f"{dl:+.2f} ({v})"
                for dl, v in zip(wide[("delta", base)], wide[("verdict", base)])
            ]
            cols += [Col(f"{base}_tau", f"{method_label(base)} tau", fnum(2), True),
                     Col(f"{base}_delta", f"Scylla - {method_label(base)} (paper: {claim.split(' over ')[0]})", ftext)]
        order = [d for d in tau.index if d in rows.index]
        out.append(render_table(rows.loc[order], cols, "claims",
                                f"{SCYLLA_CITATION}. A check, not a gate: the paper's targets, drafts and hardware differ from these."))
    out.append("<h3>Per-position acceptance</h3>")
    out.append(figure(figures.position_curves(pos, method_label), "positions", "Acceptance rate per draft position",
                      "Acceptance at each draft position k, pooled over datasets at the headline configuration: conditional (EAGLE's n-alpha) and unconditional (vLLM's). "
                      f"A conditional rate is drawn only where at least {figures.MIN_REACHED} steps reached position k-1.",
                      "No per-position acceptance recorded."))
    return "".join(out)


def _throughput(res: Results, h: tables.Headline, tt: pd.DataFrame, method_label: Label) -> str:
    out = [figure(figures.throughput_vs_batch(tt, method_label), "throughput", "Speedup over AR against batch size per top_k",
                  f"Speedup over AR (same dataset, batch and temperature, same run) against batch size, mean over datasets; T={h.temperature:g}, depth {h.depth}, "
                  f"fixed top_k at total_tokens {h.total_tokens}, auto with the tree it priced (any depth and size, or AR). Below the dashed line speculation is slower than AR.",
                  "No throughput measurements.")]
    if len(tt):
        out.append(render_table(tt, [
            Col("method", "method", method_label), Col("batch_size", "batch", fint, True),
            Col("top_k_setting", "top_k"), Col("top_k_used", "top_k used"), Col("datasets", "datasets", fint, True),
            Col("tau", "tau", fnum(2), True), Col("tokens_per_s", "tokens/s", fnum(1), True),
            Col("speedup", "speedup", fnum(2), True),
        ], "throughput", "Mean over datasets of each cell's tokens/s and speedup; tau pooled."))
        best = tables.best_setting_per_batch(tt)
        if len(best) and best["auto_speedup"].notna().any():
            best["auto_keeps_up"] = best.apply(
                lambda r: "" if pd.isna(r["auto_speedup"]) else ("yes" if r["auto_speedup"] >= 0.97 * r["best_fixed_speedup"] else "no"), axis=1)
            out.append(render_table(best, [
                Col("method", "method", method_label), Col("batch_size", "batch", fint, True),
                Col("best_fixed", "best fixed top_k"), Col("best_fixed_speedup", "its speedup", fnum(2), True),
                Col("auto_speedup", "auto speedup", fnum(2), True), Col("auto_keeps_up", "auto within 3%"),
            ], "auto_vs_fixed", "Is top_k auto at least as fast as the best fixed top_k of the headline shape at each batch size?"))
    m, grid = tables.tree_grid(res.ok, h)
    out.append("<h3>Tree shape: top_k x depth</h3>")
    out.append(figure(figures.tree_heatmap(m, grid, method_label), "heatmap", "Heatmap of tau and speedup over top_k and depth",
                      f"{method_label(m) if m else ''} at T={h.temperature:g}, batch {h.batch_size}: pooled tau and mean speedup for each tree shape.",
                      "No method was run over at least two top_k values and two depths, so there is no tree-shape grid."))
    return "".join(out)


def _auto_predictions(res: Results) -> str:
    pred = tables.auto_prediction_table(res.ok, res.predictions)
    if pred.empty:
        return ""
    pred = pred.assign(predicted_step_ms=pred["predicted_step_s"] * 1e3, step_ms=pred["step_s"] * 1e3)
    per_batch = tables.auto_prediction_summary(pred)
    summary = ", ".join(f"batch {s.batch_size}: {s.ratio:.2f}" for s in per_batch.itertuples()) or "no cell ran a tree"
    ranged = int(per_batch["ranged"].sum())
    coverage = (f" {int(per_batch['inside'].sum())} of {ranged} measured within their 10-90% range (which covers "
                "the choice of prompts only; timing noise adds to it)." if ranged else "")
    return render_table(pred, [
        Col("method", "method"), Col("dataset", "dataset"), Col("batch_size", "batch", fint, True),
        Col("tree", "auto's tree"), Col("predicted_speedup", "spec/AR predicted", fnum(2), True),
        Col("predicted_speedup_low", "10%", fnum(2), True), Col("predicted_speedup_high", "90%", fnum(2), True),
        Col("speedup", "measured", fnum(2), True), Col("predicted_tau", "tau predicted", fnum(2), True),
        Col("tau", "measured", fnum(2), True), Col("predicted_step_ms", "step ms predicted", fnum(1), True),
        Col("step_ms", "measured", fnum(1), True), Col("predicted_occupancy", "occupancy predicted", fnum(2), True),
        Col("occupancy", "measured", fnum(2), True),
    ], "auto-predictions", "What top_k auto's pricing predicted for each cell it planned (auto_trees.json), beside "
       "the measurement. 10% / 90%: spec/AR that runs of the sweep's prompts, drawn from the held-out ones "
       "the pricing replayed, measure at those quantiles. Step: one verify step with every row decoding, "
       "priced (the verify, the draft's forwards and the rest) against the cell's median step; a missed "
       "spec/AR is either its tau or its step time. Occupancy: the share of a batch's row slots its "
       "steps filled; rows that accept more finish first and leave the batch. Median measured / predicted "
       f"spec/AR over the cells that ran a tree: {summary}.{coverage}")


def _slope_text(fit) -> str:
    if fit is None:
        return "n/a (fewer than two batch sizes with a tree)"
    ci = "" if math.isnan(fit.alpha_ci95) else f" &plusmn; {fit.alpha_ci95:.2f} (95%), R&sup2; {fit.r2:.2f}"
    return f"{fit.alpha:+.2f}{ci} over {fit.n} batch sizes"


def _tree_policy(res: Results, h: tables.Headline, method_label: Label) -> str:
    pol = tables.tree_policy_table(res.ok, h.temperature)
    if pol.empty:
        return ('<p class="note">No sweep here ran top_k auto beside fixed trees, so the tree policy is not '
                "compared (run `scylla sweep --top-k 1,2,4,8,auto --depths 3,4,5,6 --batch-sizes 1,2,4,8,16`).</p>")
    out = []
    for (m, draft), g in pol.groupby(["method", "draft"], sort=False):
        slope_best = fit_loglog(g["batch_size"], g["best_fixed_top_k"])
        slope_auto = fit_loglog(g["batch_size"], g["auto_top_k"])
        surface = tables.throughput_surface(res.ok, m, draft, h.temperature)
        out.append(figure(figures.throughput_surface(surface, g, f"{method_label(m)} ({draft})"), f"surface-{m}",
                          "Throughput over top_k and depth per batch size, with the policy's choice",
                          "Tokens/s of each fixed tree (mean over datasets; per shape the largest total_tokens run), "
                          "one panel per batch size; each title names the tree top_k auto chose and its tokens/s.",
                          "No fixed trees."))
        out.append(render_table(g, [
            Col("batch_size", "batch", fint, True), Col("ar_tokens_per_s", "AR tokens/s", fnum(1), True),
            Col("best_fixed", "best fixed tree"), Col("best_fixed_tokens_per_s", "its tokens/s", fnum(1), True),
            Col("auto", "auto's tree"), Col("auto_tokens_per_s", "auto tokens/s", fnum(1), True),
            Col("auto_over_best", "auto / best", fnum(2), True), Col("fixed_trees", "fixed trees", fint, True),
        ], f"tree-policy-{m}", f"{method_label(m)}: top_k auto against the fastest of every fixed tree run at each "
                               "batch size (target >= 0.95)."))
        out.append(f'<p class="note">k*(b), log-log slope of top_k against batch size: best fixed tree '
                   f"{_slope_text(slope_best)}, auto {_slope_text(slope_auto)}. The paper (Theorem 1.3) claims the "
                   "optimal top_k falls as the batch grows, a negative slope; a batch size where auto runs AR is "
                   "left out of its fit.</p>")
    return "".join(out)


def _scaling(res: Results, h: tables.Headline, method_label: Label) -> str:
    series = tables.scaling_series(res.ok, h)
    out = [figure(figures.scaling(series, method_label), "scaling", "Scaling-law fits of tau",
                  "tau against pretraining tokens or draft layers with the fit tau = alpha log10(x) + beta; each point pools the datasets every draft in the series has.",
                  "The results do not span pretraining tokens or draft layers (a series needs at least two drafts that differ only in one of them).")]
    if series:
        rows = [{
            "method": s.method, "x": "pretraining tokens" if s.variable == "pretrain_tokens" else "draft layers",
            "fixed": s.fixed, "n": len(s.points),
            "alpha": s.fit.alpha if s.fit else float("nan"),
            "ci": "-" if s.fit is None or s.fit.alpha_ci95 != s.fit.alpha_ci95
                  else f"{s.fit.alpha_low:+.3f} .. {s.fit.alpha_high:+.3f}",
            "beta": s.fit.beta if s.fit else float("nan"), "r2": s.fit.r2 if s.fit else float("nan"),
            "verdict": claim_verdict(s.fit),
            "datasets": "; ".join(f"{d} {f.alpha:+.3f} (R^2 {f.r2:.2f})" if f else f"{d} no fit"
                                  for d, f in s.by_dataset.items()),
            "points": ", ".join(f"{x:.3g}: {t:.2f} ({v:.2f}x)" for x, t, v in
                                zip(s.points["x"], s.points["tau"], s.points["speedup"])),
        } for s in series]
        out.append(render_table(pd.DataFrame(rows), [
            Col("method", "method", method_label), Col("x", "x"), Col("fixed", "held fixed", wrap=True), Col("n", "points", fint, True),
            Col("alpha", "alpha", fnum(3), True), Col("ci", "alpha, 95% interval"), Col("beta", "beta", fnum(3), True),
            Col("r2", "R^2", fnum(3), True), Col("verdict", "against the paper", wrap=True),
            Col("datasets", "alpha per dataset", wrap=True),
            Col("points", "x: pooled tau (spec/AR tokens/s)", wrap=True),
        ], "scaling", "Least-squares fit of tau = alpha log10(x) + beta over the pooled points, and per dataset. "
                      "The paper claims a straight line in log x with a positive slope (R^2 about 0.99 in a "
                      "third-party summary); the verdict says whether these points show it."))
    for i, ab in enumerate(tables.input_ablations(res.ok, h)):
        tokens = "" if ab.pretrain_tokens is None else f", {ab.pretrain_tokens:,.0f} pretraining tokens"
        pooled = ab.table[ab.table["dataset"] == "pooled"].iloc[0]
        interval = "" if _missing(pooled["gain_ci95"]) else f" +- {pooled['gain_ci95']:.3f} (95% over the datasets)"
        out.append(render_table(ab.table, [
            Col("dataset", "dataset", dataset_label), Col("tau_projection", "tau, projection", fnum(3), True),
            Col("tau_concat", "tau, concatenation", fnum(3), True), Col("tau_gain", "concat - projection", fnum(3), True),
            Col("speedup_projection", "spec/AR, projection", fnum(2), True),
            Col("speedup_concat", "spec/AR, concatenation", fnum(2), True),
        ], f"ablation-{i}", f"Architecture ablation: {method_label(ab.method)} with {ab.layers} layer(s){tokens}, {ab.tree}, "
                       "trained on the same data with its input projection (a linear map of cat(norm(embedding), "
                       "feature)) and with plain concatenation (the first layer's attention reads cat(norm(embedding), "
                       f"norm(feature)) itself). Pooled tau gain of concatenation: {pooled['tau_gain']:+.3f}{interval}."))
    return "".join(out)


def _published(tau: pd.DataFrame, speed: pd.DataFrame, h: tables.Headline, method_label: Label) -> str:
    pub = tables.published_table(tau, speed, h.temperature)
    if pub.empty:
        return '<p class="note">No published numbers at this temperature.</p>'
    datasets = [c for c in pub.columns if c not in ("source", "model", "method") and not c.endswith("__speedup")]

    def cell(d):
        def fmt_row(r):
            t, s = r.get(d), r.get(f"{d}__speedup")
            if _missing(t):
                return ""
            return f"{t:.2f}" + ("" if _missing(s) else f" ({s:.2f}x)")
        return fmt_row

    show = pub.copy()
    for d in datasets:
        show[f"{d}__text"] = show.apply(cell(d), axis=1)
    cols = [Col("model", "model"), Col("method", "method", method_label)]
    cols += [Col(f"{d}__text", dataset_label(d), ftext, True) for d in datasets]
    cites = sorted(set(pub.loc[pub["source"] != "measured here", "source"]))
    note = (f'<p class="warn">Published numbers are <b>other target models on other hardware</b> (the first rows are this run, '
            f"at {html.escape(h.describe())}). They show the paper's scale, not a target for this run. Cells: tau (speedup over AR). "
            f"Sources: {html.escape('; '.join(cites))}.</p>")
    return note + render_table(show, cols, "published", f"tau (speedup) at T={h.temperature:g}",
                               row_class=lambda r: "" if r["source"] == "measured here" else "published")


def _checks(res: Results, loss: pd.DataFrame, method_label: Label) -> str:
    out = []
    if len(loss):
        out.append(render_table(loss, [
            Col("method", "method", method_label), Col("cells_t0", "cells at T=0", fint, True),
            Col("passed", "lossless", fint, True), Col("mismatched", "mismatched", fint, True),
            Col("not_checked", "not checked", fint, True), Col("near_ties", "requests parted at a near-tie", fint, True),
        ], "lossless", "At T=0 every speculative output must equal the AR output of the same prompts, token for token, "
                       "or part from it only at a near-tie: a token where AR's two best logits were within rounding of "
                       "each other (docs/results-schema.md) and the speculative side took the second."))
    bad = tables.lossless_failures(res.ok)
    if len(bad):
        out.append('<p class="bad">Cells whose output differed from AR:</p>')
        out.append(render_table(bad, _cell_cols(method_label, short=True), "lossless_failures", row_attrs=lambda r: {"data-cell-id": r["cell_id"]}))
    out.append("<h3>Failed cells</h3>")
    if len(res.failed):
        out.append(render_table(tables.sort_cells(res.failed), [
            Col("method", "method", method_label), Col("dataset", "dataset", dataset_label),
            Col("batch_size", "batch", fint, True), Col("top_k_setting", "top_k", ftext), Col("depth", "depth", fint, True),
            Col("temperature", "T", fnum(1), True), Col("error", "error", ftext, wrap=True),
        ], "failed", row_attrs=lambda r: {"data-cell-id": r["cell_id"]}))
    else:
        out.append('<p class="ok">No failed cells.</p>')
    if len(res.pruned):
        out.append("<details><summary>Pruned combinations</summary>" + render_table(res.pruned, [
            Col("method", "method", method_label), Col("dataset", "dataset", dataset_label),
            Col("top_k_setting", "top_k", ftext), Col("depth", "depth", fint, True),
            Col("error", "reason", ftext, wrap=True),
        ], "pruned") + "</details>")
    return "".join(out)


def _cell_cols(method_label: Label, short: bool = False) -> list[Col]:
    cols = [
        Col("method", "method", method_label), Col("dataset", "dataset", dataset_label),
        Col("batch_size", "b", fint, True), Col("top_k", "top_k", fint, True), Col("top_k_setting", "setting", ftext),
        Col("depth", "depth", fint, True), Col("total_tokens", "N", fint, True),
        Col("lookup_tokens", "+lookup", fint, True), Col("temperature", "T", fnum(1), True),
        Col("tau", "tau", fnum(2), True), Col("tokens_per_s", "tokens/s", fnum(1), True),
        Col("speedup_vs_ar", "speedup", fnum(2), True),
    ]
    if not short:
        cols.insert(1, Col("draft", "draft", ftext, wrap=True))
        cols.append(Col("lossless", "lossless", lambda v: "yes" if v else "NO"))
    return cols


def _cells(res: Results, method_label: Label) -> str:
    ok = tables.sort_cells(res.ok)
    return (f"<details><summary>All measured cells ({len(ok)} rows)</summary>"
            + render_table(ok, _cell_cols(method_label), "cells", "One row per cell of results.parquet (status ok).",
                           row_attrs=lambda r: {"data-cell-id": r["cell_id"]})
            + "</details>")


def build_report(res: Results, profs: list[Profile], title: str | None = None) -> str:
    ok = res.ok
    h = tables.choose_headline(ok) if len(ok) else tables.Headline(0.0, 1, None, None, None, {})
    hc = tables.headline_cells(ok, h) if len(ok) else ok
    tau = tables.tau_table(hc) if len(hc) else pd.DataFrame()
    claims = tables.claims_table(tau) if len(tau) else pd.DataFrame()
    pos = tables.position_acceptance(hc) if len(hc) else pd.DataFrame(columns=["method", "position", "cond", "uncond", "reached"])
    tt = tables.throughput_table(tables.throughput_cells(ok, h)) if len(ok) else pd.DataFrame()
    loss = tables.lossless_table(ok)
    label = tables.method_labeller(res.cells)

    title = title or "scylla-bench report"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("acceptance", "Acceptance"), ("throughput", "Throughput"), ("tree-policy", "Tree policy"), ("roofline", "Roofline"),
        ("scaling", "Scaling"), ("published", "Published"), ("checks", "Checks"), ("meta", "Run"), ("cells", "Cells")))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">Speculative decoding: Scylla, EAGLE-2 and EAGLE-3 against autoregressive decoding. '
        f"Generated {stamp} from {len(res.cells)} cells.</p>",
        f"<nav>{nav}</nav>",
        _glance(res, h, tau if len(tau) else pd.DataFrame(), claims, tt, loss, label) if len(ok) else
        '<p class="warn">No cell finished (status ok): only the failures can be shown.</p>',
        # Results first (what readers come for), then the device, then how it was measured.
        _section("acceptance", "Acceptance", _acceptance(h, tau, claims, pos, label) if len(tau) else '<p class="note">No finished cells.</p>'),
        _section("throughput", "Throughput against batch size", _throughput(res, h, tt, label) if len(ok) else ""),
        _section("tree-policy", "Tree policy: top_k auto against every fixed tree",
                 _tree_policy(res, h, label) + _auto_predictions(res) if len(ok) else ""),
        _section("roofline", "Roofline and verify knee", _roofline(profs)),
        _section("scaling", "Scaling laws", _scaling(res, h, label) if len(ok) else ""),
        _section("published", "Published reference numbers", _published(tau, tables.speedup_table(hc), h, label) if len(tau) else ""),
        _section("checks", "Lossless check and failures", _checks(res, loss, label)),
        _section("meta", "Run: environment, datasets, versions", _metadata(res, profs)),
        _section("cells", "Cells", _cells(res, label)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # Belt and braces for "no network": even a stray URL in a figure could not load.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")
