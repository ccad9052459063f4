"""The executor interface: another executor plugs in without touching the runner.

A test executor runs cells in reverse order (every speculative cell before its AR partner)
and sends everything through pickle, as a cluster executor (Ray) would. The worker here is
a stand-in that returns counters without a model: this test is about the driver's
contract (order independence, plain-data outcomes), the real worker is tested end to end
in test_sweep_e2e.py.
"""

import contextlib
import functools
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import executors
from harness.runner import CellOutcome, WorkerSettings, base_row, run_sweep
from harness.schema import OUTPUT_SCHEMA
from harness.spec import build_spec
from scylla_impl.decode import PHASES, DecodeStats
from workloads.errors import ScyllaError


class CountingWorker:
    """Counters of a made-up decode: AR 10 tok/s; tree cells 20 tok/s; top_k 3 diverges."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings

    def run(self, cell):
        from harness import metrics

        row = base_row(cell)
        steps = 4
        accepted = np.zeros((steps, 1), int) if cell.is_ar else np.full((steps, 1), 1)
        stats = DecodeStats(
            accepted=accepted, active=np.ones((steps, 1), bool), emitted=accepted + 1,
            drafted=np.zeros((steps, 1), int), step_s=np.full(steps, 0.1),
            phase_s={p: np.zeros(steps) for p in PHASES}, prefill_s=0.0,
            decode_s=(accepted + 1).sum() / (10.0 if cell.is_ar else 20.0), first_tokens=np.ones(1, int),
        )
        row.update(metrics.summarize([stats], None if cell.is_ar else cell.depth), status="ok")
        tokens = [1, 2, 3] if cell.top_k != 3 else [1, 2, 4]
        outputs = pa.Table.from_pylist([dict(cell_id=cell.cell_id, prompt_id="p0", turn=0, batch=0, row=0,
                                             token_ids=tokens)], schema=OUTPUT_SCHEMA)
        return CellOutcome(row, outputs)

    def close(self):
        pass


class ReversePickled:
    name = "reverse-pickled"

    @classmethod
    def from_spec(cls, spec):
        return cls()

    @contextlib.contextmanager
    def connect(self):
        yield {"executor": self.name}

    def run(self, cells, make_worker, on_start, on_result):
        make_worker = pickle.loads(pickle.dumps(make_worker))
        worker = make_worker()
        for cell in reversed([pickle.loads(pickle.dumps(c)) for c in cells]):
            on_start(cell)
            on_result(cell, pickle.loads(pickle.dumps(worker.run(cell))))


@pytest.fixture
def reverse_executor(monkeypatch):
    monkeypatch.setitem(executors.EXECUTORS, ReversePickled.name, f"{__name__}:ReversePickled")
    return ReversePickled.name


def test_a_new_executor_needs_no_runner_change(tmp_path, reverse_executor, shared_eval_dir):
    spec = build_spec(None, {"draft": ("scylla=random:scylla",), "datasets": "gsm8k", "batch_sizes": "1,2",
                             "top_k": "2,3", "depths": "2", "total_tokens": "4", "prompts": "2",
                             "executor": reverse_executor, "data_dir": str(shared_eval_dir)})
    report = run_sweep(spec, tmp_path / "out", worker_factory=CountingWorker)
    rows = pq.read_table(report.results_path).to_pylist()
    assert [r["cell_id"] for r in rows] == [c.cell_id for c in report.cells]  # plan order, whatever the run order
    for r in rows:
        assert r["status"] == "ok"
        if r["method"] == "ar":
            assert r["tau"] == 1.0 and r["speedup_vs_ar"] == 1.0
        else:
            assert r["tau"] == 2.0 and r["speedup_vs_ar"] == pytest.approx(2.0)
            assert r["lossless"] is (r["top_k"] != 3)


def test_unknown_executor_is_refused():
    with pytest.raises(ScyllaError, match="executor: 'slurm' is not one of local, ray"):
        build_spec(None, {"executor": "slurm"})


def test_worker_factory_and_settings_pickle():
    spec = build_spec(None, {"draft": ("scylla=oracle",), "datasets": "gsm8k"})
    from harness.runner import CellWorker

    factory = functools.partial(CellWorker, WorkerSettings.from_spec(spec))
    assert pickle.loads(pickle.dumps(factory)).args[0] == WorkerSettings.from_spec(spec)
