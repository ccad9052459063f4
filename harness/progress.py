"""The sweep's progress: cells done, ETA, and the last cell's tau and tokens/s.

A bar on a terminal (the running cell as its description); otherwise (CI logs, pipes) one line
per finished cell, so a long sweep is never silent (`workloads.progress`).
"""

from __future__ import annotations

import sys
from typing import Any

from harness import metrics
from harness.runner import Progress
from workloads.progress import ProgressBar, no_progress


class BarProgress(Progress):
    def __init__(self, enabled: bool | None = None):
        # enabled: None a bar on a terminal, lines off one; True a bar; False lines.
        self.mode = {None: "auto", True: "bar", False: "lines"}[enabled]
        self.bar = no_progress()
        self.failed = 0

    def start(self, total: int, skipped: int) -> None:
        desc = f"{skipped} done before" if skipped else ""
        self.bar = ProgressBar("sweep", desc, total, unit="cells", rate_unit="cell", mode=self.mode, every_s=0)

    def cell_started(self, cell) -> None:
        if self.bar.mode == "bar":  # off a terminal the cell is named when it is done
            self.bar.describe(cell.label())

    def note(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def cell_done(self, cell, row: dict[str, Any]) -> None:
        if row.get("status") == "failed":
            self.failed += 1
        post: dict[str, Any] = {}
        if row.get("tau") is not None:
            post["tau"] = f"{row['tau']:.2f}"
        if row.get("tokens_per_s") is not None:
            post["tok/s"] = f"{row['tokens_per_s']:.1f}"
        if self.failed:
            post["failed"] = self.failed
        what = (f"tau {row['tau']:.2f}, {row['tokens_per_s']:.1f} tok/s" if row.get("tau") is not None
                and row.get("tokens_per_s") is not None else row.get("status", "done"))
        paired = metrics.speedup(row.get("tokens_per_s"), row.get("paired_ar_tokens_per_s"))
        if paired is not None:
            what += f" ({paired:.2f}x of the AR alongside)"
        self.bar.update(1, note=f"{cell.label()}: {what}", **post)

    def close(self) -> None:
        self.bar.close()
