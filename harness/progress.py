"""The sweep's progress: cells done, ETA, and the last cell's tau and tokens/s.

A tqdm bar on stderr when stderr is a terminal; otherwise (CI logs, pipes) one line per
finished cell, so a long sweep is never silent.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from harness.runner import Progress


class BarProgress(Progress):
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.failed = 0

    def start(self, total: int, skipped: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        if not self.enabled:
            return
        from tqdm import tqdm

        desc = "cells" + (f" ({skipped} done before)" if skipped else "")
        self.bar = tqdm(total=total, desc=desc, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def cell_started(self, cell) -> None:
        if self.bar is not None:
            self.bar.set_description_str(cell.label(), refresh=True)

    def note(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def cell_done(self, cell, row: dict[str, Any]) -> None:
        if row.get("status") == "failed":
            self.failed += 1
        if self.bar is None:
            self._line(cell, row)
            return
        post = {}
        if row.get("tau") is not None:
            post["tau"] = f"{row['tau']:.2f}"
        if row.get("tokens_per_s") is not None:
            post["tok/s"] = f"{row['tokens_per_s']:.1f}"
        if self.failed:
            post["failed"] = self.failed
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(self, cell, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        what = (f"tau {row['tau']:.2f}, {row['tokens_per_s']:.1f} tok/s" if row.get("tau") is not None
                and row.get("tokens_per_s") is not None else row.get("status", "done"))
        print(f"[sweep] {self.done}/{self.total} cells, {elapsed:.0f} s, ETA {eta:.0f} s: {cell.label()}: {what}",
              file=sys.stderr, flush=True)
