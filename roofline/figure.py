"""The roofline figure: measured ceilings, the ridge (I_crit), and the verify steps on top.

Left: attainable FLOP/s = min(peak FLOP/s, bandwidth x intensity) for every measured
dtype (solid), the datasheet roofline when there is one (dashed), the ridge of the
target's dtype, and each timed verify forward placed at its estimated arithmetic
intensity and achieved FLOP/s (knee.verify_cost). Right: verify step time against
tokens in flight, the fitted T(b, n) and the knee. Written as PNG and SVG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from roofline.profile_doc import ProfileDoc  # noqa: E402

DTYPE_COLORS = {"bfloat16": "tab:red", "float16": "tab:orange", "float32": "tab:blue", "float32_tf32": "tab:purple"}


def _roofline(ax, bw: float, peaks: dict[str, float], xs: np.ndarray, style: str, label_suffix: str) -> None:
    for mode, peak in peaks.items():
        if peak is None:
            continue
        ax.plot(xs, np.minimum(peak, bw * xs), style, color=DTYPE_COLORS.get(mode, "gray"),
                label=f"{mode}{label_suffix}", linewidth=1.6 if style == "-" else 1.0)


def plot_profile(profile: ProfileDoc, knee_rows: list[dict], out_stem: Path) -> list[Path]:
    """Draw the figure for a profile document; `knee_rows` are per-point dicts with
    batch_size, tree_tokens, tokens_in_flight, seconds, flops, bytes. Returns the files written."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    xs = np.logspace(-2, 4, 400)
    bw, flops = profile.peak_bandwidth, profile.flops
    if bw and flops:
        _roofline(ax, bw, flops, xs, "-", " measured")
    if profile.spec_bandwidth and profile.spec_flops:
        spec_peaks = {k: v for k, v in profile.spec_flops.items() if k in flops}
        _roofline(ax, profile.spec_bandwidth, spec_peaks, xs, "--", " spec")
    ridge = profile.i_crit
    if ridge and bw:
        ax.axvline(ridge, color="black", linestyle=":", linewidth=1)
        ax.annotate(f"ridge I_crit = {ridge:.3g} FLOP/B ({profile.i_crit_dtype})", (ridge, bw * ridge),
                    textcoords="offset points", xytext=(6, -14), fontsize=8)
    if knee_rows:
        intensity = np.array([r["flops"] / r["bytes"] for r in knee_rows])
        achieved = np.array([r["flops"] / r["seconds"] for r in knee_rows])
        batches = np.array([r["batch_size"] for r in knee_rows])
        sc = ax.scatter(intensity, achieved, c=np.log2(batches), cmap="viridis", s=18, zorder=3,
                        label="verify forwards (est.)")
        fig.colorbar(sc, ax=ax, label="log2 batch size", pad=0.01)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(f"Roofline: {profile.device_name or 'device'}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")

    _knee_panel(ax2, profile.knee_fit, knee_rows)
    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        path = out_stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)
    return written


def _knee_panel(ax, fit: dict, knee_rows: list[dict]) -> None:
    if not knee_rows:
        ax.text(0.5, 0.5, "verify knee not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    cmap = plt.get_cmap("viridis")
    batches = sorted({r["batch_size"] for r in knee_rows})
    for i, b in enumerate(batches):
        rows = sorted((r for r in knee_rows if r["batch_size"] == b), key=lambda r: r["tokens_in_flight"])
        color = cmap(i / max(1, len(batches) - 1))
        x = [r["tokens_in_flight"] for r in rows]
        ax.plot(x, [r["seconds"] * 1e3 for r in rows], "o", color=color, markersize=4, label=f"b={b}")
        if fit:
            ns = np.array([r["tree_tokens"] for r in rows], dtype=float)
            pred = fit["t0_s"] + fit["per_row_s"] * b + fit["per_token_s"] * np.maximum(0, b * ns - fit["knee_tokens"])
            ax.plot(x, pred * 1e3, "-", color=color, linewidth=1)
    if fit:
        k = fit["knee_tokens"]
        label = f"knee = {k:.3g} tokens" + (f" (censored {fit['censored']})" if fit.get("censored") else "")
        ax.axvline(k, color="black", linestyle="--", linewidth=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens in flight (batch x tree tokens)")
    ax.set_ylabel("verify forward (ms)")
    ax.set_title("Verify knee: one target forward, real cached prefix")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, ncol=2)
