"""Figures (matplotlib + seaborn) rendered to SVG text, one function per figure.

Each function takes the frames tables.py / profiles.py computed (and, where it names methods,
the run's `tables.method_labeller`) and returns SVG markup
or None when there is nothing to draw (the report then says why). SVG keeps text sharp
at any zoom and needs no network; the ids matplotlib writes are salted with a constant
so that the same data gives byte-identical figures (reports diff cleanly).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: reports build on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from reports.profiles import KneeFit  # noqa: E402
from reports.tables import dataset_label, ordered  # noqa: E402
from scylla_impl.methods import COLORS  # noqa: E402

METHOD_COLORS = COLORS  # in report order
_EXTRA = ["#c44e52", "#8172b3", "#da8bc3", "#8c8c8c", "#ccb974"]
WIDTH = 9.0  # inches; the page scales figures to its column, this sets text size relative to it

plt.rcParams.update({
    "svg.hashsalt": "scylla-report",
    "svg.fonttype": "path",  # text as outlines: identical on every machine, no font lookup
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
})


def method_palette(methods) -> dict[str, str]:
    pal, extra = {}, iter(_EXTRA)
    for m in methods:
        pal[m] = METHOD_COLORS.get(m) or next(extra, "#333333")
    return pal


def to_svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def fmt_si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


# --------------------------------------------------------------------------- roofline


def roofline(profiles: list) -> str | None:
    """Attainable FLOP/s vs arithmetic intensity, one panel per profile, ridge marked."""
    from reports.profiles import ceilings

    cs = [(p, ceilings(p)) for p in profiles]
    cs = [(p, c) for p, c in cs if c.bandwidth and c.compute]
    if not cs:
        return None
    n = len(cs)
    fig, axes = plt.subplots(1, n, figsize=(WIDTH if n > 1 else WIDTH * 0.62, 3.6), squeeze=False)
    for ax, (p, c) in zip(axes[0], cs):
        # The ridge is drawn for the dtype the profile computed I_crit with (the serving
        # dtype), falling back to the fastest one measured.
        peak_dtype = c.i_crit_dtype if c.i_crit_dtype in c.compute else max(c.compute, key=c.compute.get)
        ridge = c.compute[peak_dtype] / c.bandwidth
        xs = np.logspace(np.log10(ridge) - 3, np.log10(ridge) + 2.5, 200)
        ax.plot(xs, np.minimum(c.bandwidth * xs, c.compute[peak_dtype]), color="#222222", lw=2.5, alpha=0.35,
                label=f"measured, {peak_dtype} ({c.bandwidth_kernel} {fmt_si(c.bandwidth, 'B/s')})")
        for i, (dt, fl) in enumerate(sorted(c.compute.items(), key=lambda kv: -kv[1])):
            # Each dtype's own roof: the bandwidth slope up to its ridge, then flat.
            ax.plot(xs, np.minimum(c.bandwidth * xs, fl), color=sns.color_palette("deep")[i % 10], lw=1,
                    alpha=0.9, label=f"{dt} {fmt_si(fl, 'FLOP/s')}")
        if c.spec_bandwidth and c.spec_compute:
            sp = max(c.spec_compute.values())
            ax.plot(xs, np.minimum(c.spec_bandwidth * xs, sp), color="#222222", lw=1, ls="--",
                    label=f"spec sheet ({fmt_si(c.spec_bandwidth, 'B/s')}, {fmt_si(sp, 'FLOP/s')})")
        ax.axvline(ridge, color="#c44e52", ls=":", lw=1.2)
        ax.annotate(f"I_crit = {ridge:.3g} FLOP/B ({peak_dtype})", (ridge, c.compute[peak_dtype]), xytext=(6, -14),
                    textcoords="offset points", color="#c44e52", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("attainable FLOP/s")
        ax.set_title(p.name)
        ax.legend(fontsize=7, loc="lower right", frameon=False)
    fig.tight_layout()
    return to_svg(fig)


def knee(profiles: list, points: list[pd.DataFrame], fits: list[KneeFit | None]) -> str | None:
    """Verify time vs tokens in flight (b*n), coloured by batch size, with the fitted T(b, n)."""
    items = [(p, pts, f) for p, pts, f in zip(profiles, points, fits) if len(pts)]
    if not items:
        return None
    n = len(items)
    fig, axes = plt.subplots(1, n, figsize=(WIDTH if n > 1 else WIDTH * 0.62, 3.4), squeeze=False)
    for ax, (p, pts, fit) in zip(axes[0], items):
        batches = sorted(pts["batch_size"].unique())
        colors = dict(zip(batches, sns.color_palette("viridis", len(batches))))
        for b in batches:
            g = pts[pts["batch_size"] == b].sort_values("tokens")
            ax.scatter(g["tokens"], g["time_s"] * 1e3, color=colors[b], s=22, label=f"b = {int(b)}", zorder=3)
            if fit is not None:
                # The fitted T(b, n) for this batch size, over the n range it was measured on.
                xs = np.linspace(g["tokens"].min(), g["tokens"].max(), 100)
                ax.plot(xs, fit(b, xs) * 1e3, color=colors[b], lw=1, alpha=0.8)
        if fit is not None:
            ax.axvline(fit.knee, color="#c44e52", ls=":", lw=1.2)
            ax.annotate(f"knee {fit.knee:g} tokens", (fit.knee, float(pts["time_s"].min()) * 1e3), xytext=(5, 8),
                        textcoords="offset points", color="#c44e52", fontsize=8)
            ax.set_title(f"{p.name}\n{fit.describe()}", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens in flight b x n")
        ax.set_ylabel("verify forward (ms)")
        if fit is None:
            ax.set_title(p.name)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return to_svg(fig)


# --------------------------------------------------------------------------- acceptance


def tau_bars(tau: pd.DataFrame, method_label: Callable[[str], str]) -> str | None:
    """tau per dataset, one bar per speculative method; AR (tau = 1) as a reference line."""
    spec = [m for m in tau.columns if m != "ar"]
    if not spec:
        return None
    if len(tau.index) == 2 and "all" in tau.index:
        tau = tau.drop(index="all")  # one dataset: its "all" bar would only repeat it
    long = tau[spec].reset_index().melt(id_vars="dataset", var_name="method", value_name="tau").dropna()
    if long.empty:
        return None
    long["Dataset"] = long["dataset"].map(lambda d: "all datasets" if d == "all" else dataset_label(d))
    long["Method"] = long["method"].map(method_label)
    pal = {method_label(m): c for m, c in method_palette(spec).items()}
    fig, ax = plt.subplots(figsize=(WIDTH, 3.4))
    sns.barplot(data=long, x="Dataset", y="tau", hue="Method", palette=pal, ax=ax,
                hue_order=[method_label(m) for m in spec])
    ax.axhline(1.0, color=METHOD_COLORS["ar"], ls="--", lw=1, label="AR (tau = 1)")
    ax.set_xlabel("")
    ax.set_ylabel("tau (tokens per verify step)")
    ax.legend(fontsize=8, frameon=False, ncol=len(spec) + 1, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    fig.tight_layout()
    return to_svg(fig)


MIN_REACHED = 10  # below this many steps a conditional rate is mostly noise (1 of 1 = 100%)


def position_curves(pos: pd.DataFrame, method_label: Callable[[str], str]) -> str | None:
    if pos.empty:
        return None
    pos = pos.copy()
    pos.loc[pos["reached"] < MIN_REACHED, "cond"] = np.nan
    methods = ordered(pos["method"], list(METHOD_COLORS))
    pal = method_palette(methods)
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.2), sharey=True)
    for ax, col, title in ((axes[0], "cond", "conditional (accepted at k | accepted at k-1)"),
                           (axes[1], "uncond", "unconditional (accepted at k / steps)")):
        for m in methods:
            g = pos[pos["method"] == m]
            ax.plot(g["position"], g[col], marker="o", ms=4, color=pal[m], label=method_label(m))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("draft position k")
        ax.set_ylim(0, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("acceptance rate")
    axes[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return to_svg(fig)


# --------------------------------------------------------------------------- throughput


def _setting_palette(settings: list[str]) -> dict[str, str]:
    fixed = [s for s in settings if s != "auto"]
    colors = sns.color_palette("crest", max(len(fixed), 1))
    pal = {s: matplotlib.colors.to_hex(c) for s, c in zip(fixed, colors)}
    if "auto" in settings:
        pal["auto"] = "#c44e52"
    return pal


def throughput_vs_batch(tt: pd.DataFrame, method_label: Callable[[str], str]) -> str | None:
    """Speedup over AR vs batch size, a line per top_k setting, one panel per method."""
    spec = tt[tt["method"] != "ar"]
    if spec.empty or spec["batch_size"].nunique() < 1:
        return None
    methods = ordered(spec["method"], list(METHOD_COLORS))
    settings = sorted(spec["top_k_setting"].unique(), key=lambda s: (s == "auto", int(s) if s.isdigit() else 0))
    pal = _setting_palette(settings)
    n = len(methods)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 3.0 * rows), squeeze=False, sharey=True)
    for ax, m in zip(axes.flat, methods):
        g = spec[spec["method"] == m]
        for s in settings:
            gs = g[g["top_k_setting"] == s].sort_values("batch_size")
            if gs.empty:
                continue
            label = "auto (priced tree)" if s == "auto" else f"top_k = {s}"
            ax.plot(gs["batch_size"], gs["speedup"], marker="o", ms=4, color=pal[s], label=label,
                    lw=2.2 if s == "auto" else 1.4)
        ax.axhline(1.0, color=METHOD_COLORS["ar"], ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(spec["batch_size"].unique()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(method_label(m))
        ax.set_xlabel("batch size")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("speedup over AR (x)")
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return to_svg(fig)


def throughput_surface(surface: pd.DataFrame, policy: pd.DataFrame, title: str) -> str | None:
    """tokens/s over (top_k, depth) per batch size, one panel each; the title names auto's tree."""
    if surface.empty:
        return None
    batches = sorted(surface["batch_size"].unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(max(WIDTH, 2.4 * len(batches)), 2.8), squeeze=False)
    for ax, b in zip(axes.flat, batches):
        piv = surface[surface["batch_size"] == b].pivot(index="top_k", columns="depth", values="tokens_per_s")
        sns.heatmap(piv.sort_index(ascending=False), annot=True, fmt=".0f", cmap="viridis", ax=ax, cbar=False,
                    annot_kws={"fontsize": 7})
        row = policy[policy["batch_size"] == b]
        choice = f"\nauto: {row['auto'].iloc[0]}, {row['auto_tokens_per_s'].iloc[0]:.0f}/s" if len(row) else ""
        ax.set_title(f"batch {b}{choice}", fontsize=8)
        ax.set_xlabel("depth")
        ax.set_ylabel("top_k")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_svg(fig)


def tree_heatmap(method: str | None, grid: pd.DataFrame, method_label: Callable[[str], str]) -> str | None:
    if method is None or grid.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    for ax, col, title, fmt in ((axes[0], "tau", "tau", ".2f"), (axes[1], "speedup", "speedup over AR (x)", ".2f")):
        piv = grid.pivot(index="top_k", columns="depth", values=col).sort_index(ascending=False)
        if piv.isna().all().all():
            ax.set_visible(False)
            continue
        sns.heatmap(piv, annot=True, fmt=fmt, cmap="viridis", ax=ax, cbar=False, annot_kws={"fontsize": 8})
        ax.set_title(f"{method_label(method)}: {title}")
        ax.set_xlabel("depth")
        ax.set_ylabel("top_k")
    fig.tight_layout()
    return to_svg(fig)


# --------------------------------------------------------------------------- scaling


def scaling(series: list, method_label: Callable[[str], str]) -> str | None:
    if not series:
        return None
    n = len(series)
    cols = min(n, 2)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 3.0 * rows), squeeze=False)
    for ax, s in zip(axes.flat, series):
        color = METHOD_COLORS.get(s.method, "#333333")
        ax.scatter(s.points["x"], s.points["tau"], color=color, zorder=3)
        if s.fit is not None:
            xs = np.logspace(np.log10(s.points["x"].min()), np.log10(s.points["x"].max()), 50)
            ax.plot(xs, s.fit.predict(xs), color=color, lw=1.2,
                    label=f"tau = {s.fit.alpha:.3f} log10(x) + {s.fit.beta:.3f}, R^2 = {s.fit.r2:.3f}")
            ax.legend(fontsize=7, frameon=False, loc="upper left")
        ax.set_xscale("log")
        if s.variable == "draft_layers":
            # Layer counts are small integers: label them as such, not as 2x10^0.
            ax.set_xticks(sorted(s.points["x"].unique()))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        what = "pretraining tokens" if s.variable == "pretrain_tokens" else "draft layers"
        other = "layers" if s.variable == "pretrain_tokens" else "pretraining tokens"
        ax.set_xlabel(what)
        ax.set_ylabel("tau")
        ax.set_title(f"{method_label(s.method)}: {other} = {s.fixed}", fontsize=9)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return to_svg(fig)
