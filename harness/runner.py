"""The sweep's main loop: plan cells, run them through an executor, store every outcome.

Two halves:
- `CellWorker` runs cells where the executor puts it. It loads the target once, each
  draft once and each dataset once; per cell it warms up, runs the prompts in batches
  (all turns, MT-bench's second turn after the model's own first answer), collects the
  engine's raw counters and returns a `CellOutcome` of plain data. A cell that raises,
  out-of-memory included, comes back as status `failed` with the error; it never stops
  the sweep.
- `run_sweep` (the driver) plans, skips finished cells, writes each outcome atomically
  as it arrives, and derives what needs two cells (speedup over the AR partner, the
  lossless check at temperature 0) from stored results, so the order in which cells
  finish, or an earlier killed invocation, changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import secrets
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch

from harness import environment, metrics
from harness.cells import PLANNED, PRUNED, Cell, plan
from harness.executors import WorkerLost, get_executor
from harness.inputs import (
    INPUTS_FILE,
    Inputs,
    InputsChanged,
    check_input,
    inputs_bytes,
    read_inputs,
    record_input,
)
from harness.schema import (
    OUTPUT_SCHEMA,
    RESULT_COLUMNS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PRUNED,
    STEP_SCHEMA,
    empty_row,
)
from harness.spec import AUTO, SweepSpec, check_draft_kind
from harness.storage import ResultStore
from roofline.nvml_sampler import NvmlSampler
from scylla_impl import devices
from scylla_impl.target_path import model_path
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes
from workloads.long_prompts import TRUNCATE, middle_cut, prompt_room

if TYPE_CHECKING:  # auto_trees imports this module; the sweep imports it only when asked
    from harness.auto_trees import AutoTrees

MAX_ERROR_CHARS = 2000


# ---------------------------------------------------------------------- worker


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs besides the cells; plain data, so it can travel to another process."""

    target: str
    dtype: str
    device: str
    threads: int | None
    data_dir: str | None
    system_prompt: str | None
    warmup: int
    step_table: bool
    paired_ar: bool = False  # SweepSpec.paired_ar
    out: str = ""
    compile: bool = False
    # What the results folder was measured with (harness/inputs.py); a resume checks against it.
    inputs: Inputs = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: SweepSpec, out: str | Path = "", inputs: Inputs | None = None) -> WorkerSettings:
        return cls(target=spec.target, dtype=spec.dtype, device=spec.device, threads=spec.threads,
                   data_dir=spec.data_dir, system_prompt=spec.system_prompt, warmup=spec.warmup, compile=spec.compile,
                   step_table=spec.step_table, paired_ar=spec.paired_ar, out=str(out), inputs=inputs or {})


@dataclass
class CellOutcome:
    row: dict[str, Any]
    outputs: pa.Table | None = None
    steps: pa.Table | None = None


class _PromptIds:
    """A cell's prompt token ids for (prompt, turn): the chat template over the prompt's answers
    to its earlier turns. Under --long-prompts truncate a prompt too long for the context is cut in the
    middle (and counted once); otherwise it is refused by the decoder's own rule, named."""

    def __init__(self, target, prompts, cell: Cell, system_prompt: str | None, config, speculative: bool):
        context = target.info.context
        self.target, self.prompts, self.system_prompt = target, prompts, system_prompt
        self.config, self.speculative = config, speculative
        self.room = prompt_room(context, cell.max_new_tokens) if cell.long_prompts == TRUNCATE and context else None
        self.cut: set[tuple[int, int]] = set()  # (prompt, turn) pairs truncated

    def __call__(self, i: int, turn: int, earlier: Sequence[str]) -> list[int]:
        from scylla_impl.decode import check_context
        from workloads.chat import prompt_token_ids

        ids = prompt_token_ids(self.target.tokenizer, self.prompts[i], system_prompt=self.system_prompt,
                               turn=turn, previous_answers=tuple(earlier[:turn]))
        if self.room is None:
            try:  # the decoder's own rule, checked here to name the prompt and the option
                check_context(self.target, len(ids), self.config, self.speculative)
            except ScyllaError as err:
                raise ScyllaError(f"prompt {self.prompts[i].id} outgrows the context: {err}; --long-prompts truncate "
                                  "cuts such prompts in the middle") from None
            return ids
        if len(ids) > self.room:
            self.cut.add((i, turn))
        return middle_cut(ids, self.room)

    @property
    def truncated(self) -> int | None:
        """Prompts (turns) cut to fit; None where truncation is off."""
        return len(self.cut) if self.room is not None else None


@dataclass
class _Collected:
    stats: list[Any] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


def _phase(name: str):
    """NVTX range from roofline (a no-op on the CPU, or without the nvtx package)."""
    from roofline.nvtx_ranges import phase

    return phase(name)


class _DeviceSampler:
    """Background NVML sampling during a cell (roofline's sampler); empty without a GPU."""

    COLUMNS = {"sm_clock_mhz_median": "sm_clock_mhz", "power_w_median": "power_w", "gpu_util_median": "gpu_util_pct"}

    def __init__(self, device: str):
        self._sampler = None
        if device.startswith("cuda"):
            index = int(device.split(":")[1]) if ":" in device else 0
            self._sampler = NvmlSampler(interval_s=0.1, devices=[index])

    def __enter__(self) -> _DeviceSampler:
        if self._sampler is not None:
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self._sampler.stop()

    def medians(self) -> dict[str, float | None]:
        samples = self._sampler.samples if self._sampler is not None else []
        return {col: metrics.median_or_none([getattr(s, name) for s in samples])
                for col, name in self.COLUMNS.items()}


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(err).lower()


def _error_text(err: BaseException) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    text = f"{type(err).__name__}: {msg}"
    if _is_oom(err) and "out of memory" not in text.lower():
        text = "out of memory: " + text
    tb = traceback.extract_tb(err.__traceback__)
    if tb:
        last = tb[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text[:MAX_ERROR_CHARS]


class CellWorker:
    """Runs cells in this process; keeps the target, drafts and datasets loaded between cells."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.device = devices.resolve(settings.device)
        self._threads_before: int | None = None
        if settings.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(settings.threads)
        self._target = None
        self._drafts: dict[str, Any] = {}
        self._datasets: dict[tuple[str, int], tuple[list[Any], Any]] = {}
        self._template_hash: str | None = None

    # -- resources, loaded once ------------------------------------------------------

    def target(self):
        """The target, loaded on first use. Failing to load it ends the sweep (every cell needs it)."""
        if self._target is None:
            from scylla_impl.target import Target

            try:
                self._target = Target.load(self.settings.target, dtype=self.settings.dtype, device=self.device,
                                           compile=self.settings.compile)
            except ScyllaError:
                raise
            except Exception as err:
                raise ScyllaError(f"cannot load target {self.settings.target!r}: {_error_text(err)}") from None
            check_input(self.settings.inputs, "targets", self.settings.target, self._target.info.fingerprint,
                        self.settings.out)
            check_input(self.settings.inputs, "dtypes", self.settings.dtype,
                        str(self._target.dtype).removeprefix("torch."), self.settings.out)
        return self._target

    def draft(self, spec: str):
        if spec not in self._drafts:
            from scylla_impl.drafts import load_draft

            draft = load_draft(spec, self.target())
            if draft is not None:
                check_input(self.settings.inputs, "drafts", spec, draft.info.weights_hash, self.settings.out)
            self._drafts[spec] = draft
        return self._drafts[spec]

    def dataset(self, name: str, n: int) -> tuple[list[Any], Any]:
        key = (name, n)
        if key not in self._datasets:
            from workloads.datasets import dataset_info, load_dataset

            prompts = load_dataset(name, data_dir=self.settings.data_dir, n=n)
            info = dataset_info(name, data_dir=self.settings.data_dir)
            self._datasets[key] = (list(prompts)[:n], info)
        return self._datasets[key]

    def template_hash(self) -> str | None:
        if self._template_hash is None:
            from workloads.chat import template_hash

            self._template_hash = template_hash(self.target().tokenizer, self.settings.system_prompt)
        return self._template_hash

    def close(self) -> None:
        self._drafts.clear()
        self._target = None
        gc.collect()
        if self._threads_before is not None:  # in-process callers get their setting back
            torch.set_num_threads(self._threads_before)

    # -- the engine's decode, one place (tests plant faults here) ----------------------

    def _generate(self, target, prompts: list[list[int]], draft, config):
        from scylla_impl.decode import generate

        return generate(target, prompts, draft, config)

    @staticmethod
    def _config(cell: Cell, max_new_tokens: int, seed: int):
        from scylla_impl.decode_config import DecodeConfig

        kw: dict[str, Any] = dict(temperature=cell.temperature, top_p=cell.top_p,
                                  max_new_tokens=max_new_tokens, seed=seed)
        if not cell.is_ar and cell.total_tokens > 1:
            kw.update(top_k=cell.top_k, depth=cell.depth, total_tokens=cell.total_tokens,
                      lookup_tokens=cell.lookup_tokens)
        return DecodeConfig(**kw)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    # -- one cell ----------------------------------------------------------------------

    def run(self, cell: Cell) -> CellOutcome:
        row = base_row(cell)
        row["started_at"] = datetime.now(UTC)
        self.target()  # outside the cell's failure isolation: no target, no sweep
        row["device"] = self.device
        row["dtype"] = str(self.target().dtype).removeprefix("torch.")  # what `auto` resolved to on this device
        row["matmul"] = self.target().matmul
        row["compiled"] = self.target().compiled
        row["system_prompt"] = self.settings.system_prompt
        t0 = time.perf_counter()
        try:
            outcome = self._run(cell, row)
        except InputsChanged:  # not this cell's failure: the whole resume is wrong
            raise
        except Exception as err:  # failure isolation: the sweep goes on
            row.update(status=STATUS_FAILED, error=_error_text(err))
            outcome = CellOutcome(row)
            if _is_oom(err):
                self._free_memory()
        self._sync_quietly()
        row["duration_s"] = time.perf_counter() - t0
        return outcome

    def _free_memory(self) -> None:
        gc.collect()
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _sync_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._sync()

    def _models(self, cell: Cell, row: dict[str, Any]):
        """The cell's target and draft (None: AR, or a top_k auto cell that chose no tree, whose
        draft is still loaded and recorded), with what identifies them written into `row`."""
        row["threads"] = torch.get_num_threads()
        row["device_name"] = environment.device_name(self.device)
        target = self.target()
        row["target"] = target.info.name
        row["target_fingerprint"] = target.info.fingerprint
        if cell.is_ar:
            return target, None
        draft = self.draft(cell.draft)
        if draft is None:
            raise ScyllaError(f"draft {cell.draft!r} loaded as no draft")
        info = draft.info
        check_draft_kind(cell.method, cell.draft, info.method)
        row.update(draft_method=info.method, draft_layers=info.layers, pretrain_tokens=info.pretrain_tokens,
                   draft_hash=info.weights_hash, draft_input=info.draft_input, draft_dtype=info.dtype)
        return target, None if cell.total_tokens == 1 else draft

    def _warm_up(self, cell: Cell, target, draft, first: list[list[int]], paired: bool) -> None:
        # Compiled steps: batch 1 is a shape of its own (torch specializes sizes 1), and a
        # batch shrinks to it as rows finish, so it compiles here too, not in the timed run.
        batches = [first, first[:1]] if target.compiled and cell.batch_size > 1 else [first]
        with _phase("warmup"):
            for batch in batches:
                for model in (draft, None) if paired else (draft,):
                    self._generate(target, batch, model, self._config(cell, self.settings.warmup, cell.seed))
        self._sync()

    def _run(self, cell: Cell, row: dict[str, Any]) -> CellOutcome:
        target, draft = self._models(cell, row)
        prompts, info = self.dataset(cell.dataset, cell.prompts)
        if len(prompts) < cell.batch_size:
            raise ScyllaError(f"dataset {cell.dataset} has {len(prompts)} prompts, fewer than batch_size {cell.batch_size}")
        row.update(dataset_source=info.source, dataset_checksum=info.checksum, n_prompts=len(prompts),
                   chat_template_hash=self.template_hash())

        ids_for = _PromptIds(target, prompts, cell, self.settings.system_prompt,
                             self._config(cell, cell.max_new_tokens, cell.seed), draft is not None)
        # With --paired-ar, each batch is also decoded without the draft, right before or after
        # (alternating, so neither order is favoured): the speedup then divides by throughput
        # measured alongside, not by the AR cell's, which ran minutes earlier on a machine
        # whose speed may since have moved. A top_k auto cell that chose AR pairs too: its
        # ratio is then about 1, as it is to its user, not the drift since the AR cell (a
        # bench run measured 133 tokens/s there against 175 for the AR cell minutes before).
        paired = self.settings.paired_ar and not cell.is_ar
        if self.settings.warmup > 0:
            self._warm_up(cell, target, draft, [ids_for(i, 0, ()) for i in range(cell.batch_size)], paired)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        with _DeviceSampler(self.device) as sampler, _phase(f"cell {cell.cell_id}"):
            got, paired_stats = self._decode_prompts(cell, target, draft, prompts, ids_for, paired)
            self._sync()
        row.update(metrics.summarize(got.stats, None if draft is None else cell.depth))
        if paired:
            row["paired_ar_tokens_per_s"] = metrics.summarize(paired_stats, None)["tokens_per_s"]
        row.update(sampler.medians())
        row["n_requests"] = len(got.outputs)
        row["prompts_truncated"] = ids_for.truncated
        row.update(_peak_memory(self.device))
        row["status"] = STATUS_OK
        outputs = pa.Table.from_pylist(got.outputs, schema=OUTPUT_SCHEMA)
        steps = pa.Table.from_pylist(got.steps, schema=STEP_SCHEMA) if self.settings.step_table else None
        return CellOutcome(row, outputs, steps)

    def _decode_prompts(self, cell: Cell, target, draft, prompts, ids_for: _PromptIds,
                        paired: bool) -> tuple[_Collected, list]:
        """The timed run: every prompt (every turn of it with --turns all, each turn after the
        previous one's answer) in batches of the cell's size; with `paired`, each batch also by AR."""
        n_turns = max(len(p.turns) for p in prompts) if cell.turns == "all" else 1
        answers: list[list[str]] = [[] for _ in prompts]
        got, paired_stats, call = _Collected(), [], 0
        for turn in range(n_turns):
            todo = [i for i, p in enumerate(prompts) if len(p.turns) > turn]
            for start in range(0, len(todo), cell.batch_size):
                chunk = todo[start:start + cell.batch_size]
                batch_ids = [ids_for(i, turn, answers[i]) for i in chunk]
                cfg = self._config(cell, cell.max_new_tokens, cell.seed + call)
                with _phase(f"batch {call}"):
                    if paired and call % 2 == 0:
                        paired_stats.append(self._generate(target, batch_ids, None, cfg).stats)
                    result = self._generate(target, batch_ids, draft, cfg)
                    if paired and call % 2 == 1:
                        paired_stats.append(self._generate(target, batch_ids, None, cfg).stats)
                self._collect(cell, got, result, chunk, prompts, turn, call)
                for r, i in enumerate(chunk):
                    answers[i].append(result.texts[r])
                call += 1
        return got, paired_stats

    def _collect(self, cell: Cell, got: _Collected, result, chunk: list[int], prompts, turn: int, call: int) -> None:
        stats = result.stats
        got.stats.append(stats)
        for r, i in enumerate(chunk):
            got.outputs.append(dict(cell_id=cell.cell_id, prompt_id=str(prompts[i].id), turn=turn, batch=call, row=r,
                                    token_ids=[int(t) for t in result.token_ids[r]],
                                    rivals=result.rivals[r] if result.rivals is not None else None))
        if not self.settings.step_table:
            return
        for s in range(stats.steps):
            for r in range(len(chunk)):
                got.steps.append(dict(cell_id=cell.cell_id, turn=turn, batch=call, step=s, row=r,
                                      active=bool(stats.active[s, r]), drafted=int(stats.drafted[s, r]),
                                      accepted=int(stats.accepted[s, r]), emitted=int(stats.emitted[s, r]),
                                      step_s=float(stats.step_s[s])))


def _peak_memory(device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_max_allocated"}
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_memory_bytes": int(kb) * 1024, "peak_memory_kind": "process_max_rss"}
    except (ImportError, OSError):
        return {"peak_memory_bytes": None, "peak_memory_kind": None}


def base_row(cell: Cell) -> dict[str, Any]:
    """A row holding the cell's parameters; metrics null."""
    row = empty_row()
    row.update(
        cell_id=cell.cell_id, status=STATUS_PRUNED if cell.status == PRUNED else None, error=cell.reason,
        target=cell.target, method=cell.method, draft=cell.draft, dataset=cell.dataset, batch_size=cell.batch_size,
        top_k=cell.top_k, top_k_setting=cell.top_k_setting, depth=cell.depth, total_tokens=cell.total_tokens,
        lookup_tokens=None if cell.is_ar else cell.lookup_tokens, temperature=cell.temperature, top_p=cell.top_p,
        max_new_tokens=cell.max_new_tokens, n_prompts=cell.prompts,
        turns=cell.turns, seed=cell.seed, system_prompt=cell.system_prompt, dtype=cell.dtype, device=cell.device,
        ar_cell_id=cell.ar_partner,
    )
    return row


# ---------------------------------------------------------------------- driver


class Progress:
    """Callbacks the driver calls; the CLI supplies a progress bar, tests nothing."""

    def start(self, total: int, skipped: int) -> None: ...

    def cell_started(self, cell: Cell) -> None: ...

    def cell_done(self, cell: Cell, row: dict[str, Any]) -> None: ...

    def note(self, line: str) -> None:
        """A line about a long step before the cells (pricing the auto trees)."""

    def close(self) -> None: ...


@dataclass
class SweepReport:
    out: Path
    run_id: str
    cells: list[Cell]
    ran: int = 0
    skipped: int = 0
    results_path: Path | None = None


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    resume: bool = False,
    retry_failed: bool = False,
    progress: Progress | None = None,
    worker_factory: Callable[[WorkerSettings], Any] = CellWorker,
    consolidate_every_s: float = 10.0,
) -> SweepReport:
    """Run (or resume) a sweep into `out`. Bad input raises ScyllaError before any model loads."""
    executor = get_executor(spec)
    progress = progress or Progress()
    store = ResultStore(out)
    run_id = new_run_id()
    # Every input check before anything is written: a failing sweep leaves no skeleton behind.
    store.check_out()
    _refuse_to_overwrite(store, out, resume)
    if spec.executor == "local":  # the devices and the target's folder are this machine's
        devices.resolve(spec.device)
        model_path(spec.target)
    auto_trees = None
    if AUTO in spec.top_k:
        from harness.auto_trees import sweep_policy

        auto_trees = sweep_policy(spec, out, echo=progress.note)
    cells = plan(spec, auto_trees)
    report = SweepReport(Path(out), run_id, cells)
    env = _driver_environment(spec)
    checksums = preflight_datasets(spec, [c for c in cells if c.status == PLANNED])
    # A cluster that is not there is refused before anything is written.
    with executor.connect() as where, store.locked():
        _refuse_to_overwrite(store, out, resume)  # again under the lock: another sweep may have written since
        inputs, done = _open_out(store, out, checksums, auto_trees)
        _write_run(store, spec, run_id, env, where, len(cells))
        common = {k: env[k] for k in ("git_commit", "package_versions", "profile_id")}
        for c in cells:
            if c.status == PRUNED and c.cell_id not in done:
                store.write_cell({**base_row(c), **common, "run_id": run_id, "status": STATUS_PRUNED})
        todo = [c for c in cells if c.status == PLANNED
                and (c.cell_id not in done or (retry_failed and done[c.cell_id] == STATUS_FAILED))]
        report.skipped = sum(1 for c in cells if c.status == PLANNED) - len(todo)
        sink = _ResultSink(store, spec, cells, {**common, "run_id": run_id}, inputs, report, progress,
                           consolidate_every_s)
        progress.start(len(todo), report.skipped)
        try:
            settings = WorkerSettings.from_spec(spec, out, inputs.recorded)
            executor.run(todo, functools.partial(worker_factory, settings), progress.cell_started, sink)
        except BaseException:
            _close_out(store, cells, sink, report, progress, failed=True)
            raise
        _close_out(store, cells, sink, report, progress, failed=False)
    return report


def _refuse_to_overwrite(store: ResultStore, out: str | Path, resume: bool) -> None:
    if store.has_results() and not resume:
        raise ScyllaError(f"{out} already holds sweep results; pass --resume to continue that sweep, "
                          "or choose another --out")


def _open_out(store: ResultStore, out: str | Path, checksums: dict[str, str],
              auto_trees: AutoTrees | None) -> tuple[_Inputs, dict[str, str]]:
    """The folder made ready under the sweep's lock: the datasets checked against what an earlier
    run of it read (then recorded), the auto trees written. -> its inputs, the cells already done."""
    inputs = _Inputs(store.out)
    for name, checksum in checksums.items():
        check_input(inputs.recorded, "datasets", name, checksum, out)
    store.prepare()
    if auto_trees is not None:
        auto_trees.write(store.out)
    done = store.done()
    for name, checksum in checksums.items():
        inputs.record("datasets", name, checksum)
    return inputs, done


def _close_out(store: ResultStore, cells: list[Cell], sink: _ResultSink, report: SweepReport,
               progress: Progress, *, failed: bool) -> None:
    """After the cells, finished or not: the AR-derived columns any row still lacks, then
    results.parquet. When the cells failed, that failure is the one to report, not this."""
    progress.close()
    with contextlib.suppress(Exception):
        for c in sorted(cells, key=lambda c: not c.is_ar):  # AR rows first, then their dependents
            if c.status == PLANNED:
                derive(store, c, sink.by_id, only_missing=True)
    try:
        report.results_path = store.consolidate(sink.order)
    except ScyllaError:
        if not failed:
            raise


class _Inputs:
    """The sweep's inputs.json: what each target, draft, dataset and dtype name resolved to,
    rewritten whenever a name is first seen, so a resume can refuse changed inputs."""

    def __init__(self, out: Path):
        self.out = out
        self.recorded = read_inputs(out)

    def record(self, kind: str, name: str | None, value: str | None) -> None:
        if name is not None and record_input(self.recorded, kind, name, value):
            atomic_write_bytes(inputs_bytes(self.recorded), self.out / INPUTS_FILE)


def _write_run(store: ResultStore, spec: SweepSpec, run_id: str, env: dict[str, Any], where: Any,
               cells: int) -> None:
    import yaml

    store.write_run(run_id, {"run_id": run_id, "started_at": datetime.now(UTC).isoformat(), "spec": spec.to_dict(),
                             "environment": env, "executor": where, "cells": cells})
    atomic_write_bytes(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode(), store.out / "spec.yaml")


class _ResultSink:
    """What the executor calls with each finished cell: the row written, the inputs it resolved
    recorded, the columns that need its AR partner derived (for the cell, or for the cells that
    waited on it when it is the AR one), and results.parquet rebuilt every few seconds."""

    def __init__(self, store: ResultStore, spec: SweepSpec, cells: list[Cell], common: dict[str, Any],
                 inputs: _Inputs, report: SweepReport, progress: Progress, consolidate_every_s: float):
        self.store, self.spec, self.common, self.inputs = store, spec, common, inputs
        self.report, self.progress, self.consolidate_every_s = report, progress, consolidate_every_s
        self.order = [c.cell_id for c in cells]
        self.by_id = {c.cell_id: c for c in cells}
        self.dependents: dict[str, list[Cell]] = {}
        for c in cells:
            if c.ar_partner:
                self.dependents.setdefault(c.ar_partner, []).append(c)
        self.last_consolidated = time.monotonic()

    def __call__(self, cell: Cell, outcome: CellOutcome | WorkerLost) -> None:
        try:
            self._store(cell, outcome)
        except ScyllaError as err:  # a full disk: what is written stays, and a resume continues
            raise ScyllaError(f"{err}; the cells finished before are kept, and `scylla sweep --resume` "
                              "continues") from None

    def _store(self, cell: Cell, outcome: CellOutcome | WorkerLost) -> None:
        if isinstance(outcome, WorkerLost):
            outcome = CellOutcome({**base_row(cell), "status": STATUS_FAILED, "error": outcome.error})
        row = {k: v for k, v in outcome.row.items() if k in RESULT_COLUMNS}
        row.update(self.common)
        self.store.write_cell(row, outcome.outputs, outcome.steps)
        self.inputs.record("targets", self.spec.target, row.get("target_fingerprint"))
        self.inputs.record("drafts", cell.draft, row.get("draft_hash"))
        self.inputs.record("dtypes", self.spec.dtype, row.get("dtype"))
        self.report.ran += 1
        for c in [cell] if not cell.is_ar else [cell, *self.dependents.get(cell.cell_id, [])]:
            derived = derive(self.store, c, self.by_id)
            if c is cell and derived is not None:
                row = derived
        self.progress.cell_done(cell, row)
        if time.monotonic() - self.last_consolidated > self.consolidate_every_s:
            self.store.consolidate(self.order)
            self.last_consolidated = time.monotonic()


def preflight_datasets(spec: SweepSpec, cells: Sequence[Cell]) -> dict[str, str]:
    """Every dataset the sweep will read must be available before any model loads (else
    ScyllaError). -> name -> checksum of what will be read."""
    from workloads.datasets import dataset_info

    return {name: dataset_info(name, data_dir=spec.data_dir).checksum for name in dict.fromkeys(c.dataset for c in cells)}


def derive(store: ResultStore, cell: Cell, by_id: dict[str, Cell], only_missing: bool = False) -> dict[str, Any] | None:
    """Fill the columns that need the AR partner: ar_tokens_per_s, speedup_vs_ar, lossless."""
    path = store.row_path(cell.cell_id)
    if not path.exists():
        return None
    row = store.read_row(cell.cell_id)
    if row["status"] != STATUS_OK:
        return row
    if cell.is_ar:
        if only_missing and row["speedup_vs_ar"] is not None:
            return row
        changes = {"ar_cell_id": cell.cell_id, "ar_tokens_per_s": row["tokens_per_s"],
                   "speedup_vs_ar": 1.0 if row["tokens_per_s"] else None}
    else:
        if only_missing and row["speedup_vs_ar"] is not None and (cell.temperature != 0 or row["lossless"] is not None):
            return row
        partner = cell.ar_partner
        if not partner or not store.row_path(partner).exists():
            return row
        ar_row = store.read_row(partner)
        if ar_row["status"] != STATUS_OK:
            return row
        # The AR throughput measured beside this cell's batches (--paired-ar) where there is one.
        paired = row.get("paired_ar_tokens_per_s")
        ar_tokens_per_s = paired if paired is not None else ar_row["tokens_per_s"]
        changes = {"ar_cell_id": partner, "ar_tokens_per_s": ar_tokens_per_s,
                   "speedup_vs_ar": metrics.speedup(row["tokens_per_s"], ar_tokens_per_s)}
        if cell.temperature == 0:
            mine, theirs = store.read_outputs(cell.cell_id), store.read_outputs(partner)
            if mine is not None and theirs is not None:
                check = metrics.compare_outputs({k: r.token_ids for k, r in mine.items()}, theirs)
                changes.update(lossless=check.lossless, lossless_mismatches=check.mismatches,
                               lossless_near_ties=check.near_ties)
    if any(not _same(row.get(k), v) for k, v in changes.items()):
        return store.update_row(cell.cell_id, **changes)
    return row


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _driver_environment(spec: SweepSpec) -> dict[str, Any]:
    return {
        "git_commit": environment.git_commit(),
        "package_versions": json.dumps(environment.package_versions(), sort_keys=True),
        "profile_id": environment.profile_id(spec.profile),
        "host": os.uname().nodename,
        "pid": os.getpid(),
    }

