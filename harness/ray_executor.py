"""`--executor ray`: cells on the workers of a Ray cluster (the optional extra `scylla-bench[ray]`).

- One actor per accelerator (a GPU each on a GPU cluster; `--threads` CPUs each, default 1,
  on a CPU cluster), each holding a `CellWorker`, so its target and drafts load once.
- Cells are grouped by draft (target and dtype are the sweep's), and each group goes to one
  actor, largest groups first to the least loaded actor; an actor whose queue runs dry takes
  cells from the end of the longest queue (it then loads that draft too).
- A worker process that dies mid-cell (killed, out of host memory, a crash) is replaced by a
  new actor and the cell runs again there, up to `--retries` times; then the cell is
  recorded as failed and the sweep goes on. A cell's own error is already a failed outcome
  (CellWorker isolates it); an error out of the worker (the target does not load, a
  changed input on resume) ends the sweep as it does locally.
- The driver alone writes results (the runner's `on_result`), so resume, Ctrl-C and SIGTERM
  behave exactly as with the local executor: a cell in flight when the driver stops is
  simply run again by `--resume`.

`--ray-address` joins a running cluster (`ray start --head` on one node, `ray start
--address HEAD:6379` on the others; every node needs the same scylla-bench installed and the
same paths to drafts and data); without it a private local instance is started and stopped
with the sweep.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.executors import OnResult, OnStart, WorkerLost
from workloads.errors import ScyllaError

if TYPE_CHECKING:
    from harness.cells import Cell
    from harness.spec import SweepSpec

INSTALL_HINT = "pip install 'scylla-bench[ray]'"


def _ray():
    try:
        import ray
    except ImportError:  # an optional extra: the user's machine may lack it
        raise ScyllaError(f"executor ray: the ray package is not installed here; {INSTALL_HINT}") from None
    return ray


class WorkerHost:
    """A Ray actor's body: one `CellWorker`, made on the first cell and kept between cells."""

    def __init__(self, make_worker: Callable[[], Any], threads: int):
        self._make_worker = make_worker
        self._threads = threads
        self._worker = None

    def run(self, cell: Cell) -> Any:
        if self._worker is None:
            import torch

            from harness.quiet import quiet_libraries

            quiet_libraries()  # as the local CLI does: no loading bars in the driver's log
            torch.set_num_threads(self._threads)  # what the actor was given, not the node's cores
            self._worker = self._make_worker()
        return self._worker.run(cell)


@dataclass
class _Slot:
    """One actor and the cells queued for it."""

    actor: Any
    queue: collections.deque


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, workers: int | None, retries: int, threads: int | None, device: str):
        self.address = address
        self.workers = workers
        self.retries = retries
        self.threads = threads or 1
        self.device = device
        self._resources: dict[str, float] = {}
        self._n_workers = 0

    @classmethod
    def from_spec(cls, spec: SweepSpec) -> RayExecutor:
        return cls(spec.ray_address, spec.workers, spec.retries, spec.threads, spec.device)

    # -- the cluster ------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[dict[str, Any]]:
        ray = _ray()
        if ray.is_initialized():
            raise ScyllaError("executor ray: this process is already connected to Ray; run the sweep in its own process")
        started_here = self.address is None
        # Ray's core replaces the process's SIGTERM and SIGINT handlers with its crash logger; the
        # sweep's own (finish writing, then exit) must stay.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if started_here:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nothing anywhere
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                         logging_level=logging.WARNING)
            else:
                _check_reachable(self.address)
                ray.init(address=self.address, logging_level=logging.WARNING)
        except ScyllaError:
            raise
        except Exception as err:  # connection refused, bad address, a version mismatch
            where = "start a local Ray instance" if started_here else f"connect to the Ray cluster at {self.address}"
            raise ScyllaError(f"executor ray: cannot {where}: {' '.join(str(err).split())[:300]}") from None
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    if handler is not None:  # None: set outside Python, nothing to put back
                        signal.signal(sig, handler)
        try:
            yield self._plan_workers(ray, started_here)
        finally:
            ray.shutdown()

    def _plan_workers(self, ray, started_here: bool) -> dict[str, Any]:
        total = ray.cluster_resources()
        gpus = int(total.get("GPU", 0))
        if self.device.startswith("cuda:"):
            raise ScyllaError(f"device {self.device}: with executor ray each worker gets its own GPU; use --device cuda or auto")
        use_gpu = self.device == "cuda" or (self.device == "auto" and gpus > 0)
        if self.device == "cuda" and gpus == 0:
            raise ScyllaError("device cuda: the Ray cluster has no GPU; use --device cpu or auto")
        self._resources = {"CPU": self.threads, "GPU": 1} if use_gpu else {"CPU": self.threads}
        fits = self._fits(total)
        if fits == 0:
            raise ScyllaError(f"executor ray: no node of the cluster has room for one worker "
                              f"({self._describe_resources()}; the cluster has {self._cluster_line(total)})")
        if self.workers is not None and self.workers > fits:
            raise ScyllaError(f"workers: {self.workers} workers of {self._describe_resources()} do not fit the "
                              f"cluster ({self._cluster_line(total)}); at most {fits}")
        self._n_workers = self.workers or fits
        nodes = [{"host": n["NodeManagerHostname"], "address": n["NodeManagerAddress"],
                  "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0)}
                 for n in ray.nodes() if n["Alive"]]
        return {"executor": self.name, "ray_version": ray.__version__, "address": self.address or "local",
                "started_here": started_here, "nodes": nodes, "workers": self._n_workers,
                "worker_resources": self._resources, "retries": self.retries}

    def _fits(self, total: dict[str, float]) -> int:
        """How many workers the cluster's resources hold (its totals, not what is free now)."""
        return min(int(total.get(k, 0) // v) for k, v in self._resources.items())

    def _describe_resources(self) -> str:
        return " + ".join(f"{v:g} {k}" for k, v in self._resources.items())

    @staticmethod
    def _cluster_line(total: dict[str, float]) -> str:
        return ", ".join(f"{total.get(k, 0):g} {k}" for k in ("CPU", "GPU"))

    # -- the cells --------------------------------------------------------------------

    def run(self, cells: Sequence[Cell], make_worker: Callable[[], Any], on_start: OnStart, on_result: OnResult) -> None:
        ray = _ray()
        if not cells:
            return
        host = ray.remote(num_cpus=self._resources["CPU"], num_gpus=self._resources.get("GPU", 0))(WorkerHost)
        lost_types = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                      ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)
        pool = _Pool(lambda: host.remote(make_worker, self.threads), assign(cells, self._n_workers), on_start)
        lost = collections.Counter()
        try:
            for i in range(len(pool.slots)):
                pool.dispatch(i)
            while pool.in_flight:
                [ref], _ = ray.wait(list(pool.in_flight), num_returns=1)
                i, cell = pool.in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # raised out of the worker: ends the sweep, as locally
                    raise (err.cause or err) from None
                except lost_types as err:
                    if isinstance(err, ray.exceptions.RayActorError) and err.actor_init_failed:
                        raise ScyllaError(f"executor ray: a worker could not start ({_last_error_line(err)}); every "
                                          "node needs the same scylla-bench installed and the same paths") from None
                    lost[cell.cell_id] += 1
                    if lost[cell.cell_id] <= self.retries:
                        pool.slots[i].queue.appendleft(cell)
                    else:
                        on_result(cell, WorkerLost(f"worker process died {lost[cell.cell_id]} times running this cell "
                                                   f"(retries {self.retries}); last: {type(err).__name__}: "
                                                   f"{_last_error_line(err)}"))
                    i = self._replace(ray, pool, i)
                    if i is not None:
                        pool.dispatch(i)
                    continue
                on_result(cell, outcome)
                pool.dispatch(i)
        finally:
            for slot in pool.slots:
                with contextlib.suppress(Exception):
                    ray.kill(slot.actor)

    def _replace(self, ray, pool: _Pool, i: int) -> int | None:
        """A new actor for slot i's dead one, while the cluster still has room for every live slot
        (a node may have left); else the slot retires and its queue goes to the least loaded
        live slot. -> the slot that should take the next cell."""
        with contextlib.suppress(Exception):
            ray.kill(pool.slots[i].actor)
        live = [j for j, s in enumerate(pool.slots) if s.actor is not None]
        if self._fits(ray.cluster_resources()) >= len(live):
            pool.slots[i].actor = pool.new_actor()
            return i
        heir = pool.retire(i)
        if heir is None:
            raise ScyllaError("executor ray: every worker died and the cluster has no room for a new one "
                              f"({self._describe_resources()} each); `scylla sweep --resume` continues")
        return heir if not pool.busy(heir) else None


class _Pool:
    """The actors, each with its queue of cells, and the cells in flight (object ref -> slot, cell)."""

    def __init__(self, new_actor: Callable[[], Any], queues: list[collections.deque], on_start: OnStart):
        self.new_actor, self.on_start = new_actor, on_start
        self.slots = [_Slot(new_actor(), queue) for queue in queues]
        self.in_flight: dict[Any, tuple[int, Cell]] = {}

    def dispatch(self, i: int) -> None:
        """Slot i's next cell to its actor; a slot whose groups are done takes from the end of
        the longest queue."""
        slot = self.slots[i]
        if not slot.queue:
            longest = max(self.slots, key=lambda s: len(s.queue))
            if not longest.queue:
                return
            slot.queue.append(longest.queue.pop())
        cell = slot.queue.popleft()
        self.on_start(cell)
        self.in_flight[slot.actor.run.remote(cell)] = (i, cell)

    def retire(self, i: int) -> int | None:
        """Slot i leaves; its queue goes to the least loaded live slot, which is returned (None:
        no live slot is left)."""
        self.slots[i].actor = None
        others = [j for j, s in enumerate(self.slots) if s.actor is not None]
        if not others:
            return None
        heir = min(others, key=lambda j: len(self.slots[j].queue))
        self.slots[heir].queue.extend(self.slots[i].queue)
        self.slots[i].queue.clear()
        return heir

    def busy(self, i: int) -> bool:
        return any(slot == i for slot, _ in self.in_flight.values())

def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Ray waits minutes on an address where nothing listens; a TCP connect says so in seconds."""
    if address == "auto":  # the cluster `ray start` left on this machine: Ray finds it or says so
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")  # the spec checked the form
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ScyllaError(f"executor ray: no Ray cluster answers at {address} ({err.strerror or err}); start one "
                          "with `ray start --head` or check --ray-address") from None


def _last_error_line(err: BaseException) -> str:
    """Ray's errors carry whole tracebacks and advice; the line that names the error is enough here."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line or "error:" in line]
    return (named[-1] if named else lines[0] if lines else type(err).__name__)[:300]


def assign(cells: Sequence[Cell], n_workers: int) -> list[collections.deque]:
    """Cells of one draft go to one worker: largest groups first, each to the least loaded
    worker (plan order kept inside each queue). -> one queue per worker (some may be empty)."""
    groups: dict[str | None, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.draft, []).append(cell)
    queues = [collections.deque() for _ in range(n_workers)]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(queues, key=len).extend(group)
    return queues
