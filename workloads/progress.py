"""One progress display for every long step (corpus statistics, the target's answers and
features, training, the device profile, a sweep): a tqdm bar when stderr is a terminal, a line
every `every_s` seconds and one at the end when it is not (CI logs, pipes, the bench's log),
or nothing. A long step is never silent unless asked to be.

    bar = ProgressBar("train", "target features", total=tokens, unit="tokens", rate_unit="tok")
    for chunk in chunks:
        ...
        bar.update(len(chunk))
    bar.close()

Off a terminal every caller's line reads the same:
`[train] target features: 2000/4000 tokens, 16.4 tok/s, 61s, ETA 122s`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

MODES = ("auto", "bar", "lines", "none")
T = TypeVar("T")


def resolve_mode(mode: str | bool | None) -> str:
    """`auto` (or None, or True): a bar on a terminal, lines off one; False: `none`."""
    if mode is None or mode is True:
        mode = "auto"
    elif mode is False:
        return "none"
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    return mode


class ProgressBar:
    """Counts `unit`s of one step towards `total` (None: unknown) and shows them in one of the modes."""

    def __init__(self, tag: str, desc: str, total: int | None = None, *, unit: str = "steps",
                 rate_unit: str | None = None, mode: str | bool | None = "auto", initial: int = 0,
                 every_s: float = 60.0):
        self.tag, self.desc, self.total, self.unit = tag, desc, total, unit
        self.rate_unit = rate_unit or unit
        self.mode = resolve_mode(mode)
        self.every_s = every_s
        self.done = self.before = initial  # initial: done by an earlier run this one resumes
        self.started = self._last_line = time.perf_counter()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=self.rate_unit, file=sys.stderr,
                             unit_scale=self.rate_unit == "tok", **_bar_size())

    # -- what the counters say (`now`: one clock reading for a whole line) ---------

    def elapsed_s(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.started

    def rate(self, now: float | None = None) -> float:
        """Units per second in this run (not counting what a resumed run found done)."""
        return (self.done - self.before) / max(self.elapsed_s(now), 1e-9)

    def eta_s(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def line(self, now: float | None = None, note: str | None = None) -> str:
        now = time.perf_counter() if now is None else now
        what = f"{self.desc}: " if self.desc else ""
        if self.total is None:
            count = f"{self.done} {self.unit}"
        elif self.done > self.total:  # work that comes in lumps (a batch of answers) ends past its total
            count = f"{self.done} {self.unit} ({self.total} wanted)"
        else:
            count = f"{self.done}/{self.total} {self.unit}"
        eta = self.eta_s(now)
        tail = f", ETA {eta:.0f}s" if eta is not None and (self.done < self.total or note) else ""
        return (f"[{self.tag}] {what}{count}, {self.rate(now):.1f} {self.rate_unit}/s, "
                f"{self.elapsed_s(now):.0f}s{tail}" + (f": {note}" if note else ""))

    # -- what callers do -------------------------------------------------------------

    def update(self, n: int = 1, desc: str | None = None, note: str | None = None, **postfix: Any) -> None:
        """Count `n` more (of the step now named `desc`). `postfix` (name=value) is shown beside a
        bar; `note` ends the line off a terminal (what was just done, e.g. the cell and its tau)."""
        if desc is not None:
            self.describe(desc)
        if self._bar is not None and postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._advance(n)
        if self.mode == "lines":
            now = time.perf_counter()
            finished = self.total is not None and self.done >= self.total
            if now - self._last_line >= self.every_s or finished:
                self._last_line = now
                self.write(self.line(now, note))

    def skip(self, n: int) -> None:
        """Count `n` found already done (a cache, a resumed run): shown, but not in the rate."""
        self._advance(n)
        self.before += n

    def _advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            if self.total is not None and self.done > self.total:  # a bar past 100% reads as a bug
                self._bar.total = self.done
            self._bar.update(n)

    def describe(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=False)

    def write(self, text: str) -> None:
        """A line of its own (above a bar, which keeps its place); nothing in mode `none`."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        elif self.mode != "none":
            print(text, file=sys.stderr, flush=True)

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            yield item
            self.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bar_size() -> dict[str, Any]:
    """tqdm follows the terminal's width as it changes; a terminal that reports 0 columns or rows (a
    pty nobody sized: `docker run -t` under some runners, `script`) would hide the bar entirely, so
    it gets a fixed 80 x 24."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):  # not a terminal (a bar asked for in a log): no width to keep to
        return {"dynamic_ncols": True}
    return {"dynamic_ncols": True} if columns and lines else {"ncols": 80, "nrows": 24}


def no_progress(tag: str = "", desc: str = "") -> ProgressBar:
    return ProgressBar(tag, desc, mode="none")

