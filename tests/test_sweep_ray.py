"""`--executor ray` on a real local Ray instance (started by the sweep, 2 CPUs here) and a tiny
random Llama target: the results match the local executor's in every column that is not a
clock reading; a worker process killed by PID mid-cell is replaced and the cell runs again
(or, out of retries, is recorded as failed while the sweep goes on); the driver stopped by
SIGTERM or SIGKILL leaves a results folder that `--resume` completes, no cell lost or doubled.
"""

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from test_train import make_tiny

from harness.runner import CellWorker, run_sweep
from harness.schema import RESULT_COLUMNS
from harness.spec import build_spec
from harness.storage import ResultStore
from workloads.errors import ScyllaError

REPO = Path(__file__).resolve().parent.parent
# Clock readings, memory and run identity: everything else must not depend on where a cell ran.
MEASURED = {"run_id", "tokens_per_s", "ar_tokens_per_s", "speedup_vs_ar", "step_time_median_s", "step_time_p90_s",
            "draft_time_median_s", "tree_time_median_s", "verify_time_median_s", "accept_time_median_s",
            "commit_time_median_s", "prefill_s", "decode_s", "peak_memory_bytes", "started_at", "duration_s"}


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory, default_model_dir) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


def sweep_keys(target: Path, data_dir: Path, **over: str) -> dict:
    keys = {"target": str(target), "methods": "ar,scylla,eagle3",
            "draft": ("scylla=random:scylla", "eagle3=random:eagle3"), "datasets": "gsm8k,alpaca",
            "batch_sizes": "1,2", "top_k": "2", "depths": "2", "total_tokens": "4", "prompts": "2",
            "max_new_tokens": "8", "warmup": "0", "dtype": "float32", "threads": "1", "data_dir": str(data_dir)}
    keys.update(over)
    return keys


def rows_by_cell(path: Path) -> dict[str, dict]:
    rows = pq.read_table(path).to_pylist()
    by_id = {r["cell_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a cell is in the results twice"
    return by_id


def test_ray_sweep_matches_local(tiny_target, shared_eval_dir, tmp_path):
    local = run_sweep(build_spec(None, sweep_keys(tiny_target, shared_eval_dir)), tmp_path / "local")
    ray = run_sweep(build_spec(None, sweep_keys(tiny_target, shared_eval_dir, executor="ray")), tmp_path / "ray")
    a, b = rows_by_cell(local.results_path), rows_by_cell(ray.results_path)
    assert a.keys() == b.keys() and len(a) == 12
    for cell_id, row in a.items():
        assert row["status"] == "ok" and row["emitted_tokens"] > 0
        for column in RESULT_COLUMNS:
            if column not in MEASURED:
                assert b[cell_id][column] == row[column], (cell_id, column)
    here, there = ResultStore(tmp_path / "local"), ResultStore(tmp_path / "ray")
    for cell_id in a:  # token for token the same answers
        assert there.read_outputs(cell_id) == here.read_outputs(cell_id), cell_id
    [record] = (tmp_path / "ray" / "runs").glob("*.json")
    where = json.loads(record.read_text())["executor"]
    assert where["executor"] == "ray" and where["workers"] == os.cpu_count() and where["started_here"]
    assert where["nodes"][0]["cpus"] == os.cpu_count() and where["worker_resources"] == {"CPU": 1}


def test_worker_that_cannot_start_ends_the_sweep(tiny_target, shared_eval_dir, tmp_path, monkeypatch):
    """A worker class the cluster's workers cannot import (as on a node without scylla-bench):
    one clean error, not a cell failing over and over."""
    (tmp_path / "only_on_the_driver.py").write_text("from harness.runner import CellWorker\n\n\n"
                                                    "class OnlyHere(CellWorker):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from only_on_the_driver import OnlyHere

    spec = build_spec(None, sweep_keys(tiny_target, shared_eval_dir, datasets="gsm8k", executor="ray"))
    with pytest.raises(ScyllaError, match=r"a worker could not start \(.*No module named 'only_on_the_driver'.*\); "
                                          "every node needs the same scylla-bench"):
        run_sweep(spec, tmp_path / "out", worker_factory=OnlyHere)
    assert ResultStore(tmp_path / "out").row_files() == []


# Ray's workers import the package, not the tests: this module's classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KilledOnceWorker(CellWorker):
    """Announces its PID when it starts the victim cell (once per announce file), then waits to be killed."""

    def __init__(self, settings, victim: str, announce: str):
        super().__init__(settings)
        self.victim, self.announce = victim, Path(announce)

    def run(self, cell):
        if cell.cell_id == self.victim and not self.announce.exists():
            tmp = self.announce.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.rename(self.announce)
            time.sleep(120)
        return super().run(cell)


def kill_when_announced(announce: Path) -> threading.Thread:
    def kill() -> None:
        deadline = time.monotonic() + 300
        while not announce.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(announce.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow  # about 30-45 s on 2 cores: actors start twice
def test_killed_worker_is_recorded_failed_then_retried(tiny_target, shared_eval_dir, tmp_path):
    keys = sweep_keys(tiny_target, shared_eval_dir, datasets="gsm8k", executor="ray", retries="0")
    spec = build_spec(None, keys)
    out = tmp_path / "out"
    from harness.cells import plan

    victim = [c for c in plan(spec) if c.method == "scylla"][0].cell_id
    # Out of retries: the victim is recorded as failed, every other cell still runs.
    killer = kill_when_announced(tmp_path / "first.pid")
    first = run_sweep(spec, out, worker_factory=functools.partial(KilledOnceWorker, victim=victim,
                                                                   announce=str(tmp_path / "first.pid")))
    killer.join(timeout=5)
    rows = rows_by_cell(first.results_path)
    assert len(rows) == 6 and rows[victim]["status"] == "failed"
    assert "worker process died 1 times running this cell (retries 0)" in rows[victim]["error"]
    assert all(r["status"] == "ok" for c, r in rows.items() if c != victim)
    kept = {c: r["run_id"] for c, r in rows.items() if c != victim}

    # Retrying it: its worker is killed again, a new one takes the cell, and it succeeds.
    killer = kill_when_announced(tmp_path / "second.pid")
    again = run_sweep(build_spec(None, {**keys, "retries": "1"}), out, resume=True, retry_failed=True,
                      worker_factory=functools.partial(KilledOnceWorker, victim=victim,
                                                       announce=str(tmp_path / "second.pid")))
    killer.join(timeout=5)
    assert again.ran == 1 and again.skipped == 5
    rows = rows_by_cell(again.results_path)
    assert rows[victim]["status"] == "ok" and rows[victim]["lossless"] is True
    assert {c: r["run_id"] for c, r in rows.items() if c != victim} == kept  # nothing else ran again


def cli_flags(keys: dict) -> list[str]:
    flags = []
    for key, value in keys.items():
        for one in value if isinstance(value, tuple) else (value,):
            flags += [f"--{key.replace('_', '-')}", one]
    return flags


def ray_processes() -> set[int]:
    """PIDs of this machine's Ray processes (raylet, GCS, agents, workers)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"ray::" in cmd or b"/ray/" in cmd or b"raylet" in cmd or b"gcs_server" in cmd:
                found.add(int(proc.name))
    return found


@pytest.mark.slow
def test_driver_stopped_then_resumed(tiny_target, shared_eval_dir, tmp_path):
    """SIGTERM: the finished cells are consolidated, rc 143. SIGKILL: nothing consolidates, and
    the lock and the cluster die with the driver. Each time `--resume` goes on from there."""
    out = tmp_path / "out"
    keys = sweep_keys(tiny_target, shared_eval_dir, max_new_tokens="48", prompts="4", executor="ray")
    flags = cli_flags(keys)
    before = ray_processes()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    store = ResultStore(out)

    def stop_after_rows(n: int, sig: int, *extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", *flags, "--out", str(out), *extra],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while len(store.row_files()) < n and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    try:
        term = stop_after_rows(1, signal.SIGTERM)
        assert term.returncode == 128 + signal.SIGTERM, term.stderr[-2000:]
        assert "terminated: writing the finished cells" in term.stderr and "Traceback" not in term.stderr
        consolidated = rows_by_cell(out / "results.parquet")
        assert 1 <= len(consolidated) < 12 and {r["status"] for r in consolidated.values()} == {"ok"}

        killed = stop_after_rows(len(consolidated) + 1, signal.SIGKILL, "--resume")
        assert killed.returncode == -signal.SIGKILL
        finished = {p.stem for p in store.row_files()}
        assert len(finished) < 12, "the sweep ended before the kill: nothing was tested"

        done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", *flags, "--out", str(out), "--resume"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{12 - len(finished)} run now, {len(finished)} kept from before" in done.stdout
        rows = rows_by_cell(out / "results.parquet")
        assert len(rows) == 12 and {r["status"] for r in rows.values()} == {"ok"}
        assert all(rows[c]["run_id"] == r["run_id"] for c, r in consolidated.items())
        assert all(r["lossless"] is True for r in rows.values() if r["method"] != "ar")
    finally:  # what a SIGKILLed driver's local Ray instance left behind (its idle agents)
        for pid in ray_processes() - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
