"""Executors: where cells run. One small interface, a registry, and `local` (the default).

The runner hands an executor the cells to run, a picklable factory that builds a worker
(a `harness.runner.CellWorker`: loads the target once, each draft once, runs cells), and
two callbacks. The executor decides where workers live and in what order cells run; the
driver (which alone writes results) receives every outcome through `on_result`. A cluster
executor, e.g. Ray with one accelerator per task, fits behind the same interface:

    @register("ray")
    class RayExecutor:
        def run(self, cells, make_worker, on_start, on_result):
            Worker = ray.remote(num_gpus=1)(WorkerActor)      # holds make_worker()
            actors = [Worker.remote(make_worker) for _ in range(n_gpus)]
            # submit cells round-robin, grouped so an actor keeps its drafts,
            # and call on_result(cell, outcome) in the driver as results arrive.

Nothing in the runner changes: outcomes are plain data, speedup and the lossless check
are derived by the driver from stored results, in whatever order cells finish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from harness.cells import Cell

OnStart = Callable[["Cell"], None]
OnResult = Callable[["Cell", Any], None]


class Executor(Protocol):
    name: str

    def run(self, cells: Sequence[Cell], make_worker: Callable[[], Any], on_start: OnStart, on_result: OnResult) -> None:
        """Run every cell once and report each outcome through `on_result`.

        The worker's `run(cell)` never raises for a failing cell (it returns an outcome
        with status failed); an exception out of `run` is an interrupt or a bug and ends
        the sweep, with every outcome reported so far already stored by the driver.
        """


EXECUTORS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return deco


def get_executor(name: str, **options: Any) -> Executor:
    from workloads.errors import ScyllaError

    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ScyllaError(f"executor: unknown {name!r}; known: {', '.join(EXECUTORS)}") from None
    return cls(**options)


@register("local")
class LocalExecutor:
    """In-process, one cell after another, in plan order (AR partner first in each group)."""

    name = "local"

    def run(self, cells: Sequence[Cell], make_worker: Callable[[], Any], on_start: OnStart, on_result: OnResult) -> None:
        if not cells:
            return
        worker = make_worker()
        try:
            for cell in cells:
                on_start(cell)
                on_result(cell, worker.run(cell))
        finally:
            close = getattr(worker, "close", None)
            if close is not None:
                close()
