"""`scylla sweep [SPEC.yaml] [--KEY VALUE ...] --out DIR [--resume] [--dry-run]`.

Every spec key is a flag (generated from `harness.spec.KEYS`, so they cannot drift);
flags override the file. Results go to DIR/results.parquet (schema: docs/results-schema.md).
"""

from __future__ import annotations

import math
import signal
from collections import Counter
from typing import Any

import click

from harness.spec import AUTO, KEYS, build_spec
from scylla_impl.target_path import model_path
from workloads.errors import ScyllaError


def _spec_options(fn):
    for key in reversed(list(KEYS.values())):
        if key.flag:
            opt = click.option(f"{key.option}/--no-{key.option[2:]}", key.name, default=None, help=key.help)
        elif key.multiple:
            opt = click.option(key.option, key.name, multiple=True, metavar=key.metavar, help=key.help)
        else:
            opt = click.option(key.option, key.name, default=None, metavar=key.metavar, help=key.help)
        fn = opt(fn)
    return fn


@click.command(context_settings={"max_content_width": 110})
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False), metavar="[SPEC.yaml]")
@_spec_options
@click.option("--resume", is_flag=True, help="continue the sweep in --out: finished cells are skipped")
@click.option("--retry-failed", is_flag=True, help="with --resume, run failed cells again")
@click.option("--dry-run", is_flag=True, help="list the cells and the pruned combinations, run nothing")
def sweep(spec_file: str | None, resume: bool, retry_failed: bool, dry_run: bool, **keys: Any) -> None:
    """Run a benchmark sweep: methods x datasets x batch sizes x top_k x depths x total_tokens x temperatures.

    An AR baseline cell is added for each (dataset, batch size, temperature); speedups and the
    lossless check (temperature 0) compare each speculative cell with it.
    """
    spec = build_spec(spec_file, keys)
    from harness.cells import PRUNED, plan

    if dry_run:
        auto_trees = None
        if AUTO in spec.top_k:  # pricing the trees loads the models: the one slow part of a dry run
            from harness.auto_trees import sweep_policy

            auto_trees = sweep_policy(spec, spec.out if resume else None, echo=click.echo)
        cells = plan(spec, auto_trees)
        _print_plan(cells)
        return
    if spec.out is None:
        raise ScyllaError("no results folder: pass --out DIR (or set out: in the spec)")
    if retry_failed and not resume:
        raise ScyllaError("--retry-failed goes with --resume")
    if spec.executor == "local":  # run_sweep checks it too; here it is one line before torch loads
        model_path(spec.target)

    from harness.progress import BarProgress
    from harness.quiet import quiet_libraries
    from harness.runner import run_sweep

    quiet_libraries()  # no weight-loading bars under the sweep's own
    # SIGTERM (a scheduler's stop) unwinds like Ctrl-C: finished cells are consolidated first.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        report = run_sweep(spec, spec.out, resume=resume, retry_failed=retry_failed, progress=BarProgress())
    except Exception:
        # A C extension running Python code when the signal came (pyarrow importing zoneinfo for
        # its first timestamp, say) turns the handler's SystemExit into an error of its own.
        if _stopped_by:
            raise SystemExit(128 + _stopped_by[0]) from None
        raise
    import pyarrow.parquet as pq

    every = pq.read_table(report.results_path).to_pylist()
    rows = [r for r in every if r["status"] != PRUNED]
    _print_results(rows)
    n = Counter(r["status"] for r in every)
    click.echo(
        f"wrote {report.results_path} ({n['ok']} ok, {n['failed']} failed, {n[PRUNED]} pruned; "
        f"{report.ran} run now, {report.skipped} kept from before)"
    )
    reasons = Counter(r["error"] for r in every if r["status"] == PRUNED)
    for reason, count in reasons.items():
        click.echo(f"pruned {count} cell{'s' if count > 1 else ''}: {reason}")
    if not rows:
        shown = "; ".join(list(reasons)[:3]) + (f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else "")
        raise ScyllaError(f"nothing ran: every cell was pruned ({shown}); `scylla sweep --dry-run` lists the cells "
                          "a spec makes")
    if n["failed"]:  # the results are written; the exit status still says not everything ran
        first = next(r for r in rows if r["status"] == "failed")
        raise ScyllaError(f"{n['failed']} cell(s) failed (first: {first['method']} on {first['dataset']}: "
                          f"{(first['error'] or '').splitlines()[0][:120]}); `scylla sweep --resume --retry-failed` "
                          "runs them again")


_stopped_by: list[int] = []  # the signal that asked the sweep to stop, once one has


def _terminated(signum, frame) -> None:
    _stopped_by.append(signum)
    click.echo("terminated: writing the finished cells to the results file; `scylla sweep --resume` "
               "continues with the rest", err=True)
    raise SystemExit(128 + signum)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _print_plan(cells) -> None:
    from harness.cells import PRUNED

    run = [c for c in cells if c.status != PRUNED]
    pruned = [c for c in cells if c.status == PRUNED]
    header = ["cell_id", "method", "draft", "dataset", "batch", "top_k", "depth", "total", "T"]
    body = [
        [c.cell_id, c.method, c.draft or "-", c.dataset, str(c.batch_size),
         "-" if c.top_k is None else (f"auto->{c.top_k}" if c.top_k_setting == "auto" else str(c.top_k)),
         _fmt(c.depth), _fmt(c.total_tokens), f"{c.temperature:g}"]
        for c in run
    ]
    click.echo(f"{len(run)} cells to run:")
    click.echo(_table(header, body))
    if pruned:
        click.echo(f"\n{len(pruned)} combinations pruned:")
        for c in pruned:
            click.echo(f"  {c.label()}: {c.reason}")


def _lossless(row: dict[str, Any]) -> str:
    ties = row.get("lossless_near_ties") or 0
    return _fmt(row["lossless"]) + (f" ({ties} near-tie{'s' if ties > 1 else ''})" if ties else "")


def _print_results(rows: list[dict[str, Any]]) -> None:
    header = ["method", "dataset", "batch", "top_k", "depth", "T", "tau", "tok/s", "speedup", "lossless", "status"]
    body = []
    for r in rows:
        k = r["top_k"]
        k = "-" if k is None else (f"auto->{k}" if r["top_k_setting"] == "auto" else str(k))
        body.append([
            r["method"], r["dataset"], str(r["batch_size"]), k, _fmt(r["depth"]), f"{r['temperature']:g}",
            _fmt(r["tau"]), _fmt(r["tokens_per_s"], 1), _fmt(r["speedup_vs_ar"]), _lossless(r),
            r["status"] if r["status"] == "ok" else f"{r['status']}: {(r['error'] or '')[:60]}",
        ])
    if body:
        click.echo(_table(header, body))
