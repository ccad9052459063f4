"""Executors: where cells run. One small interface, a registry, `local` (the default) and `ray`.

The runner hands an executor the cells to run, a picklable factory that builds a worker
(a `harness.runner.CellWorker`: loads the target once, each draft once, runs cells), and
two callbacks. The executor decides where workers live and in what order cells run; the
driver (which alone writes results) receives every outcome through `on_result`, in
whatever order cells finish: speedup and the lossless check are derived by the driver
from stored results.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from workloads.errors import ScyllaError

if TYPE_CHECKING:
    from harness.cells import Cell
    from harness.spec import SweepSpec

OnStart = Callable[["Cell"], None]
OnResult = Callable[["Cell", Any], None]


@dataclass(frozen=True)
class WorkerLost:
    """The outcome of a cell whose worker process died (killed, out of host memory, a crash)
    on every try the retries allow; the driver records the cell as failed with this error."""

    error: str


class Executor(Protocol):
    name: str

    def connect(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Acquire where cells will run; yields its description, recorded with the run's results."""

    def run(self, cells: Sequence[Cell], make_worker: Callable[[], Any], on_start: OnStart, on_result: OnResult) -> None:
        """Run every cell once and report each outcome (a `CellOutcome`, or `WorkerLost`)
        through `on_result`, inside `connect()`.

        The worker's `run(cell)` never raises for a failing cell (it returns an outcome
        with status failed); an exception out of `run` is an interrupt or a bug and ends
        the sweep, with every outcome reported so far already stored by the driver.
        """


# name -> "module:Class", imported on first use: `ray` is an optional extra.
EXECUTORS: dict[str, str] = {
    "local": "harness.executors:LocalExecutor",
    "ray": "harness.ray_executor:RayExecutor",
}


def get_executor(spec: SweepSpec) -> Executor:
    try:
        where = EXECUTORS[spec.executor]
    except KeyError:
        raise ScyllaError(f"executor: unknown {spec.executor!r}; known: {', '.join(EXECUTORS)}") from None
    module, cls = where.split(":")
    return getattr(importlib.import_module(module), cls).from_spec(spec)


class LocalExecutor:
    """In-process, one cell after another, in plan order (AR partner first in each group)."""

    name = "local"

    @classmethod
    def from_spec(cls, spec: SweepSpec) -> LocalExecutor:
        return cls()

    @contextlib.contextmanager
    def connect(self) -> Iterator[dict[str, Any]]:
        yield {"executor": self.name, "host": socket.gethostname(), "pid": os.getpid()}

    def run(self, cells: Sequence[Cell], make_worker: Callable[[], Any], on_start: OnStart, on_result: OnResult) -> None:
        if not cells:
            return
        worker = make_worker()
        try:
            for cell in cells:
                on_start(cell)
                on_result(cell, worker.run(cell))
        finally:
            worker.close()
