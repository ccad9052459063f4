"""`scylla profile`: characterise this device (bandwidth, compute, I_crit, verify knee, top-k policy)."""

from __future__ import annotations

from pathlib import Path

import click

from scylla_impl import devices, dtypes
from scylla_impl.target_path import model_path


def _fmt(value: float | None, unit: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value / scale:.3g} {unit}"


def _auto_threads() -> int:
    from roofline.cpu_threads import auto_threads, available_cpus

    threads, busy = auto_threads()
    if threads < available_cpus():
        click.echo(f"warning: other processes keep {busy:.1f} of {available_cpus()} CPUs busy: measuring with 1 "
                   "thread; timings will be slower and noisier than on an idle machine (--threads N to override)",
                   err=True)
    return threads


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", default="auto", show_default=True,
              help=f"{devices.HELP}: the device to measure.")
@click.option("--target", default="default", show_default=True,
              help="Target model for the verify knee: 'default' (embedded SmolLM2-135M) or a Hugging Face model folder.")
@click.option("--dtype", default=dtypes.AUTO, show_default=True, type=click.Choice(dtypes.CHOICES),
              help="Target dtype for the verify knee; I_crit is quoted for this dtype. " + dtypes.DECODE_HELP)
@click.option("--quick", is_flag=True, help="A smaller grid (under two minutes on a 2-core CPU).")
@click.option("--depth", default=5, show_default=True, type=click.IntRange(min=1),
              help="Tree depth of the draft-free knee-rule table in profile.json (sweeps' top_k auto "
                   "chooses its depth itself).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads [default: every CPU this process may use, or 1 when the "
                   "load average already fills them: busy cores stall multi-threaded torch].")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for profile.json, the Parquet tables and the roofline figure.")
def profile(device: str, target: str, dtype: str, quick: bool, depth: int, threads: int | None,
            out: Path) -> None:
    """Measure bandwidth and compute peaks, I_crit, the verify knee and the top-k policy."""
    model_path(target)  # a mistyped --target is one line before the engine loads (check_options checks the rest)
    import torch

    from roofline.profile import ProfileOptions, check_options, run_profile

    options = ProfileOptions(out=out, device=device, target=target, dtype=dtype, quick=quick, depth=depth)
    # Checked before the busy-CPU warning and the minutes of measuring: a wrong --target or
    # --out ends here with its one error line.
    checked = check_options(options)
    torch.set_num_threads(threads or _auto_threads())
    doc = run_profile(options, device=checked)

    bw = doc.get("bandwidth_bytes_per_s") or {}
    click.echo(f"device: {doc['device']['name']} ({doc['device']['device']}, "
               f"{doc['device']['cpu']['threads_used']} CPU threads)")
    click.echo("bandwidth (" + str(doc.get("bandwidth_backend")) + "): "
               + ", ".join(f"{k} {_fmt(v, 'GB/s', 1e9)}" for k, v in bw.items()))
    nt = doc.get("numpy_triad")
    if nt:
        click.echo(f"numpy triad: {_fmt(nt['numpy_bytes_per_s'], 'GB/s', 1e9)} "
                   f"(torch/numpy {nt['ratio_torch_over_numpy']:.2f}, agrees within 20%: {nt['agrees']})")
    click.echo("compute: " + ", ".join(f"{k} {_fmt(v, 'GFLOP/s', 1e9)}" for k, v in (doc.get("flops_per_s") or {}).items()))
    ic = doc.get("i_crit") or {}
    click.echo(f"I_crit ({ic.get('dtype')}): measured {_fmt(ic.get('measured'), 'FLOP/B')}, "
               f"spec {_fmt(ic.get('spec'), 'FLOP/B')}")
    knee = doc.get("knee") or {}
    fit = knee.get("fit") or {}
    censored = f" (censored {fit['censored']})" if fit.get("censored") else ""
    click.echo(f"verify knee: {doc.get('knee_tokens') or 'n/a'} tokens in flight{censored}")
    if knee.get("points"):
        from roofline.latency_curve import verify_curve

        curve = verify_curve(doc)
        one = curve.seconds(1, 1)
        click.echo("verify cost against one token, batch 1 (what top_k auto prices trees with): " + ", ".join(
            f"n={n} {curve.seconds(1, n) / one:.2f}x" for n, _ in curve.points[min(curve.points)] if n > 1))
    if doc.get("topk_policy"):
        click.echo("knee rule, draft-free (depth {}): ".format(doc["topk_policy"][0]["depth"]) + ", ".join(
            f"b={e['batch_size']}: k={e['top_k']}/N={e['total_tokens']}" for e in doc["topk_policy"]))
    if doc.get("unmeasured"):
        click.echo(f"not measured: {len(doc['unmeasured'])} item(s), see 'unmeasured' in profile.json")
    click.echo(f"wrote {out / 'profile.json'}")
