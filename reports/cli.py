"""`scylla report RESULTS_DIR... [--profile DIR...] -o report.html`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from workloads.errors import ScyllaError


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--profile", "profile_dirs", multiple=True, type=click.Path(path_type=Path),
              help="roofline profile folder from `scylla profile --out`; repeat to compare devices")
@click.option("-o", "--out", "out", default="report.html", show_default=True, type=click.Path(path_type=Path),
              help="HTML file to write")
@click.option("--title", default=None, help="page title")
def report(results: tuple[Path, ...], profile_dirs: tuple[Path, ...], out: Path, title: str | None) -> None:
    """Write one self-contained HTML report from sweep results (and roofline profiles)."""
    # Imported here so `scylla --help` stays fast (matplotlib and seaborn are slow to import).
    from reports.html import build_report
    from reports.load import load_profile, load_results

    res = load_results(list(results))
    profs = [load_profile(p) for p in profile_dirs]
    page = build_report(res, profs, title=title)
    if out.parent and not out.parent.exists():
        raise ScyllaError(f"output folder does not exist: {out.parent}")
    # Write beside the target and rename, so a reader never sees half a report.
    fd, tmp = tempfile.mkstemp(dir=out.parent or ".", prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, out)
    click.echo(f"wrote {out} ({len(page) / 1e6:.1f} MB, {len(res.cells)} cells, {len(profs)} profiles)")
