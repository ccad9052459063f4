"""`scylla report RESULTS_DIR... [--profile DIR...] -o report.html`."""

from __future__ import annotations

from pathlib import Path

import click

from workloads.errors import ScyllaError
from workloads.files import atomic_write, check_writable_folder


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--profile", "profile_dirs", multiple=True, type=click.Path(path_type=Path),
              help="roofline profile folder from `scylla profile --out`; repeat to compare devices")
@click.option("-o", "--out", "out", default="report.html", show_default=True, type=click.Path(path_type=Path),
              help="HTML file to write")
@click.option("--title", default=None, help="page title")
def report(results: tuple[Path, ...], profile_dirs: tuple[Path, ...], out: Path, title: str | None) -> None:
    """Write one self-contained HTML report from sweep results (and roofline profiles)."""
    # Before any reading: a report of many cells takes a while to build, only to be lost.
    check_out(out)
    # Imported here so `scylla --help` stays fast, and the report's (matplotlib and seaborn
    # are slow to import) only once the input has been read: bad input is refused at once.
    from reports.load import load_profile, load_results

    res = load_results(list(results))
    for note in res.notes:
        click.echo(note, err=True)
    profs = [load_profile(p) for p in profile_dirs]
    from reports.html import build_report

    page = build_report(res, profs, title=title)
    # Whole or not at all: a full disk leaves the previous report and no temporary file.
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    click.echo(f"wrote {out} ({len(page) / 1e6:.1f} MB, {len(res.cells)} cells, {len(profs)} profiles)")


def _looks_like_html(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def check_out(out: Path) -> None:
    """The report can go to OUT: its folder exists and takes new files, and OUT is not
    something of the user's that a report would overwrite. A full disk shows only on write."""
    if out.is_dir():
        raise ScyllaError(f"-o {out} is a folder; give a file name, e.g. -o {out / 'report.html'}")
    parent = out.parent
    if not parent.exists():
        raise ScyllaError(f"-o {out}: the folder {parent} does not exist; create it or choose another -o")
    check_writable_folder(parent, "-o")
    if out.exists() and not _looks_like_html(out):
        # E.g. `-o DIR/results.parquet` by a slip: replacing it would lose the sweep's results.
        raise ScyllaError(f"-o {out} exists and is not an HTML page; not overwriting it: "
                          "choose another -o (or remove the file first)")
