"""`scylla scaling --out DIR`: Scylla's scaling laws measured on this machine (harness/scaling.py).

The options are generated from `ScalingPlan`'s fields (their help and default live there);
running the same command again resumes the run in DIR piece by piece.
"""

import dataclasses
from pathlib import Path

import click

from harness.scaling import ScalingPlan
from workloads.progress import MODES


def _plan_options(fn):
    for f in reversed(dataclasses.fields(ScalingPlan)):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = meta["help"] + (f" [{shown}]" if shown not in (None, {}) else "")
        kind = click.Choice(meta["choices"]) if meta.get("choices") else str
        fn = click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=None, help=help,
                          multiple=bool(meta.get("multiple")))(fn)
    return fn


@click.command(context_settings={"max_content_width": 110})
@_plan_options
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="run folder: drafts/, sweep/, profile/, sweep-batch/, scaling.json, fits.parquet, ablation.parquet; the same command "
                   "again resumes it")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's)")
@click.option("--progress", type=click.Choice(MODES), default="auto", show_default=True,
              help="auto: a bar on a terminal, a line a minute otherwise (logs, CI)")
@click.option("--dry-run", is_flag=True, help="list the drafts and the measurement, run nothing")
def scaling(out: str, threads: int | None, progress: str, dry_run: bool, **options) -> None:
    """Train Scylla drafts over pretraining budgets and layer counts, measure tau and the fastest tree per
    batch size, fit the paper's three scaling laws; compare Scylla's input projection with plain concatenation."""
    import torch

    from harness import scaling as law
    from harness.quiet import quiet_libraries
    from workloads.files import check_writable_folder

    fields = {f.name: f for f in dataclasses.fields(ScalingPlan)}
    given = {}
    for name, value in options.items():
        if value is None or value == ():
            continue
        parse = fields[name].metadata["parse"]
        given[name] = parse(value) if parse is not None else value
    plan = ScalingPlan(**given)
    if dry_run:
        for point in plan.points():
            click.echo(f"draft {law.draft_name(point)}: {point.layers} layer(s), {point.tokens:,} pretraining tokens, "
                       f"input {point.draft_input}")
        if plan.points(law.TAU_SERIES):
            click.echo(f"tau at top_k {plan.top_k}, depth {plan.depth}, batch 1, T=0 on {', '.join(plan.datasets)} "
                       f"({plan.prompts} prompts, {plan.max_new_tokens} new tokens each)")
        if "batch" in plan.series:
            click.echo(f"the fastest tree of {law.draft_name(plan.batch_draft())} at batch sizes "
                       f"{', '.join(map(str, plan.batch_sizes))}: top_k {', '.join(map(str, plan.batch_top_k))} and auto "
                       f"at depth {plan.batch_depth} on {', '.join(plan.batch_datasets)}, after a quick device profile")
        return
    check_writable_folder(out, "--out")
    quiet_libraries()
    if threads:
        torch.set_num_threads(threads)
    outcome = law.run(plan, Path(out), threads=threads, progress=progress, echo=lambda m: click.echo(m, err=True))
    if len(outcome.fits):
        click.echo(law.describe(outcome.fits))
    if outcome.ablation is not None:
        click.echo(law.describe_ablation(outcome.ablation))
    sweeps = [d for d in ("sweep", "sweep-batch") if (Path(out) / d / "results.parquet").is_file()]
    written = [law.FITS_FILE] * bool(len(outcome.fits)) + [law.ABLATION_FILE] * (outcome.ablation is not None)
    click.echo(f"wrote {', '.join(str(Path(out) / f) for f in written)}; the report: "
               + " and ".join(f"scylla report {Path(out) / d}" for d in sweeps))
