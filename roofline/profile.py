"""`scylla profile`: measure the device, write profile.json, the raw tables and the roofline figure.

    doc = run_profile(ProfileOptions(device="auto", target="default", quick=True, out=Path("prof")))

Steps: device facts -> bandwidth (read/copy/triad; numpy triad cross-check on CPU) ->
matmul shape search per dtype -> I_crit -> verify knee on the real target -> top-k policy
-> files. An NVML sampler runs throughout (no-op without a GPU) and every phase is an NVTX
range. Nothing that is merely unavailable (driver, Triton, a counter, a target that fails
to load on this device) stops the profile: it lands in `unmeasured` with the reason. What
the user got wrong (a --target folder that is not a model, an --out that cannot be written)
is checked first, before any measuring (`check_options`); the files are written through a
staging folder, so a full disk leaves neither a partial profile nor temp files.

profile.json's fields, units and meaning are `roofline.profile_doc.ProfileRecord`: each phase
fills its part of one record, written with its version and content id at the end.

Parquet tables beside it: bandwidth.parquet (kernel, backend, dtype, elements, buffer_bytes,
bytes_moved, past_llc, block, num_warps, verified, clock, warmup, rep, seconds, bytes_per_s),
numpy_triad.parquet (impl, rep, seconds, bytes_moved, bytes_per_s, elements, threads),
compute.parquet (mode, m, n, k, layout, flops, clock, warmup, rep, seconds, flops_per_s),
knee.parquet (batch_size, tree_tokens, tokens_in_flight, prefix_tokens, prefill_s, cache_source, clock,
warmup, rep, seconds, flops_est, bytes_est), nvml.parquet (NvmlSample fields).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from roofline import bandwidth as bw_mod
from roofline import compute as mm_mod
from roofline import knee as knee_mod
from roofline import policy as policy_mod
from roofline.device_facts import DeviceFacts, collect_device_facts, host_available_bytes
from roofline.nvml_sampler import NvmlSampler
from roofline.nvtx_ranges import phase
from roofline.profile_doc import PROFILE_FILE, ICrit, Knee, ProfileDoc, ProfileRecord
from roofline.spec_sheet import match_spec, nvml_bandwidth_bytes_per_s, nvml_flops_per_s
from roofline.timing import CacheFlusher, Timer
from roofline.triton_kernels import LaunchConfig
from roofline.unmeasured import Unmeasured
from scylla_impl import devices, dtypes, precision
from workloads.errors import ScyllaError, first_line, os_error
from workloads.files import check_writable_folder
from workloads.progress import ProgressBar

TARGET_DTYPES = dtypes.NAMES  # the knee's target dtype; I_crit is quoted for it
MiB = 1 << 20


@dataclass(frozen=True)
class Plan:
    """How much to measure. One per (device kind, quick), in `PLANS`."""

    bw_llc_multiples: tuple[float, ...]  # buffer sizes per array, in last-level caches
    bw_min_bytes: int  # floor on the largest buffer, for devices with a tiny or unknown LLC
    bw_configs: tuple[LaunchConfig, ...]  # Triton launch configs tried (torch uses the first block)
    bw_warmup: int
    bw_reps: int
    mm_sizes: tuple[int, ...]
    mm_budget_s: float  # per matmul call; larger sizes are skipped past it
    mm_warmup: int
    mm_reps: int
    knee_batches: tuple[int, ...]
    knee_tokens: tuple[int, ...]
    knee_max_in_flight: int
    knee_warmup: int
    knee_reps: int
    knee_budget_s: float | None = None  # wall-clock cap on the knee grid (cheap points first)
    prefix_tokens: int = knee_mod.PREFIX_TOKENS


_POW2_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
PLANS: dict[tuple[str, bool], Plan] = {
    # 2 CPU cores: the knee is a handful of tokens, so the grid stops at 128 in flight;
    # the whole quick plan takes about a minute.
    ("cpu", True): Plan(
        bw_llc_multiples=(4, 8), bw_min_bytes=128 * MiB, bw_configs=(LaunchConfig(4096, 8),),
        bw_warmup=1, bw_reps=5, mm_sizes=(256, 512, 1024), mm_budget_s=0.25, mm_warmup=1, mm_reps=3,
        knee_batches=(1, 2, 4, 8), knee_tokens=_POW2_TOKENS[:7], knee_max_in_flight=128,
        knee_warmup=1, knee_reps=9, knee_budget_s=55.0,
    ),
    ("cpu", False): Plan(
        bw_llc_multiples=(0.25, 1, 4, 8, 16), bw_min_bytes=256 * MiB, bw_configs=(LaunchConfig(4096, 8),),
        bw_warmup=2, bw_reps=9, mm_sizes=(256, 512, 1024, 2048), mm_budget_s=1.5, mm_warmup=1, mm_reps=5,
        knee_batches=(1, 2, 4, 8, 16, 32), knee_tokens=_POW2_TOKENS, knee_max_in_flight=256,
        knee_warmup=1, knee_reps=9, knee_budget_s=480.0,
    ),
    ("cuda", True): Plan(
        bw_llc_multiples=(16, 64), bw_min_bytes=512 * MiB,
        bw_configs=(LaunchConfig(4096, 4), LaunchConfig(8192, 8), LaunchConfig(16384, 8)),
        bw_warmup=3, bw_reps=10, mm_sizes=(2048, 4096, 8192, 16384), mm_budget_s=0.2, mm_warmup=3, mm_reps=10,
        knee_batches=(1, 2, 4, 8, 16, 32, 64), knee_tokens=_POW2_TOKENS, knee_max_in_flight=8192,
        knee_warmup=2, knee_reps=5,
    ),
    ("cuda", False): Plan(
        bw_llc_multiples=(0.5, 1, 4, 16, 64, 128), bw_min_bytes=1024 * MiB,
        bw_configs=(LaunchConfig(2048, 4), LaunchConfig(4096, 4), LaunchConfig(8192, 8), LaunchConfig(16384, 8)),
        bw_warmup=5, bw_reps=20, mm_sizes=(1024, 2048, 4096, 6144, 8192, 12288, 16384), mm_budget_s=0.5,
        mm_warmup=5, mm_reps=20,
        knee_batches=(1, 2, 4, 8, 16, 32, 64), knee_tokens=_POW2_TOKENS, knee_max_in_flight=8192,
        knee_warmup=3, knee_reps=10,
    ),
}


@dataclass
class ProfileOptions:
    out: Path
    device: str = "auto"  # auto | cuda | cpu (or cuda:N)
    target: str = "default"
    dtype: str = dtypes.AUTO  # the target's dtype for the knee (auto: a sweep's default)
    quick: bool = False
    depth: int = policy_mod.DEFAULT_DEPTH
    progress: bool | None = None  # None: a bar on a terminal, a line a minute off one; False: none
    plan: Plan | None = None  # override (tests use tiny plans)


def resolve_device(spec: str) -> torch.device:
    """The device to profile; `cuda` names the current GPU, so its index is recorded."""
    device = torch.device(devices.resolve(spec))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass
class _Run:
    """Everything measured so far; turned into the document and tables at the end."""

    device: torch.device
    facts: DeviceFacts
    plan: Plan
    record: ProfileRecord
    unmeasured: list[Unmeasured] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    knee_rows: list[dict] = field(default_factory=list)


# -- phases ---------------------------------------------------------------------------------


def _buffer_sizes(run: _Run) -> list[int]:
    llc = run.facts.llc_bytes
    if llc is None:
        run.unmeasured.append(Unmeasured("bandwidth.llc", "last-level cache size unknown; buffers sized "
                                         "from the plan's floor and none counts as past the LLC"))
        return [run.plan.bw_min_bytes]
    sizes = [int(m * llc) for m in run.plan.bw_llc_multiples]
    sizes[-1] = max(sizes[-1], run.plan.bw_min_bytes)
    # Three arrays of the largest size must fit comfortably beside the cache flusher: a CPU whose
    # last-level cache is large next to its memory (480 MiB of L3 on a 23 GB VM) would otherwise
    # ask for 3 x 3.75 GB and be killed by the kernel's OOM killer.
    if run.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(run.device)
    else:
        free = host_available_bytes()
    if free is not None:
        sizes = [min(s, free // 8) for s in sizes]
    return sorted(set(sizes))


def _bandwidth(run: _Run, progress: ProgressBar) -> None:
    plan, device = run.plan, run.device
    timer = Timer(device)
    llc = run.facts.llc_bytes
    flusher = CacheFlusher(device, llc) if llc else None
    backends = []
    for backend in bw_mod.BACKENDS:
        why = bw_mod.backend_unavailable(backend, device)
        if why is None:
            backends.append(backend)
        else:
            run.unmeasured.append(Unmeasured(f"bandwidth.{backend}", why))
    samples: list[bw_mod.BandwidthSample] = []
    for size in _buffer_sizes(run):
        for name, kernel in bw_mod.KERNELS.items():
            for backend in backends:
                configs = plan.bw_configs if backend == "triton" else plan.bw_configs[:1]
                for cfg in configs:
                    n = bw_mod.elements_for(size, cfg.block)
                    try:
                        sample = bw_mod.measure_stream(kernel, backend, n, device, timer, flusher=flusher,
                                                       llc_bytes=llc, config=cfg, warmup=plan.bw_warmup,
                                                       reps=plan.bw_reps)
                    except Exception as err:  # e.g. a Triton compile failure: record, keep going
                        run.unmeasured.append(Unmeasured(f"bandwidth.{backend}.{name}",
                                                         f"{type(err).__name__}: {err}".splitlines()[0]))
                        continue
                    if not sample.verified:
                        run.unmeasured.append(Unmeasured(
                            f"bandwidth.{backend}.{name}", f"result verification failed at {n} elements"))
                    samples.append(sample)
                progress.update(1, desc=f"bandwidth {name} {size // MiB} MiB")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    run.tables["bandwidth"] = [row for s in samples for row in s.rows()]
    by_backend = {b: bw_mod.peak_by_kernel(samples, b) for b in backends}
    by_backend = {b: v for b, v in by_backend.items() if v}
    primary = next((b for b in bw_mod.BACKENDS if b in by_backend), None)
    per_kernel = by_backend.get(primary, {}) if primary else {}
    record = run.record
    record.bandwidth_bytes_per_s = per_kernel
    record.bandwidth_backend = primary
    record.bandwidth_by_backend = by_backend
    if per_kernel:
        kernel = max(per_kernel, key=per_kernel.get)
        record.bandwidth_peak_bytes_per_s = per_kernel[kernel]
        record.bandwidth_peak_kernel = kernel
    else:
        run.unmeasured.append(Unmeasured("bandwidth_bytes_per_s", "no verified measurement past the LLC"))

    # numpy's triad in the same run: only meaningful where torch streams host memory.
    if device.type == "cpu" and llc:
        size = max(_buffer_sizes(run))
        check = bw_mod.numpy_triad_crosscheck(bw_mod.elements_for(size, bw_mod.PATTERN_PERIOD),
                                              threads=torch.get_num_threads(), flusher=flusher,
                                              warmup=1, reps=plan.bw_reps)
        record.numpy_triad = check.to_json()
        run.tables["numpy_triad"] = check.rows()
        progress.update(1, desc="numpy triad")
    else:
        run.unmeasured.append(Unmeasured("numpy_triad", "numpy streams host memory; it cannot cross-check a GPU"
                                         if device.type == "cuda" else "last-level cache size unknown"))


def _compute(run: _Run, progress: ProgressBar) -> None:
    timer = Timer(run.device)
    results = []
    for mode in mm_mod.MODES.values():
        why = mm_mod.mode_unavailable(mode, run.device)
        if why:
            run.unmeasured.append(Unmeasured(f"flops_per_s.{mode.name}", why))
            continue
        try:
            result = mm_mod.search_mode(mode, run.device, timer, sizes=run.plan.mm_sizes,
                                        budget_s=run.plan.mm_budget_s, warmup=run.plan.mm_warmup,
                                        reps=run.plan.mm_reps)
        except Exception as err:  # a dtype this build cannot multiply
            run.unmeasured.append(Unmeasured(f"flops_per_s.{mode.name}", f"{type(err).__name__}: {err}"))
            continue
        results.append(result)
        progress.update(1, desc=f"matmul {mode.name}")
    peaks, missing = mm_mod.peak_flops(results)
    run.unmeasured += missing
    run.record.flops_per_s = peaks
    run.record.best_matmul = {
        r.mode: {"m": b.m, "n": b.n, "k": b.k, "layout": b.layout, "seconds": b.timing.median_s}
        for r in results if (b := r.best) is not None
    }
    run.tables["compute"] = [row for r in results for s in r.samples for row in s.rows()]


def _resolve_dtype(run: _Run, options: ProfileOptions) -> None:
    if options.dtype == dtypes.AUTO:
        # A sweep's own `auto` (decoding's rule), so the knee and I_crit are quoted for the precision
        # a default sweep decodes in: a knee measured in one dtype says nothing about the other.
        from scylla_impl.target import auto_dtype

        try:
            options.dtype = auto_dtype(options.target, str(run.device))
        except Exception as err:  # a target that cannot load here (memory, an adapter bug): the rest still runs
            options.dtype = precision.fast_dtype(str(run.device))
            run.unmeasured.append(Unmeasured("dtype", f"auto could not time target {options.target!r} "
                                                      f"({type(err).__name__}: {err}); {options.dtype} by the "
                                                      "matmul rule"))
        run.record.options["dtype"] = options.dtype
        run.record.options["dtype_requested"] = dtypes.AUTO


def _spec_and_icrit(run: _Run, dtype: str = "bfloat16") -> None:
    gpu = run.facts.gpu
    entry = match_spec(gpu.name) if gpu is not None else None
    run.record.spec = entry.to_json() if entry else None
    if entry is None:
        run.unmeasured.append(Unmeasured("spec", "no datasheet entry for CPUs" if gpu is None
                                         else f"no datasheet entry matches {gpu.name!r}"))
    derived = None
    if gpu is not None:
        nvml_bw = nvml_bandwidth_bytes_per_s(gpu.max_mem_clock_mhz, gpu.memory_bus_width_bits)
        nvml_fl = nvml_flops_per_s(entry, gpu.sm_count, gpu.max_sm_clock_mhz) if entry else {}
        derived = {"bandwidth_bytes_per_s": nvml_bw, "flops_per_s": nvml_fl}
        if nvml_bw is None:
            run.unmeasured.append(Unmeasured("nvml_derived.bandwidth", "NVML gave no memory clock or bus width"))
    run.record.nvml_derived = derived

    bw = run.record.bandwidth_peak_bytes_per_s
    flops = run.record.flops_per_s
    measured = {k: v / bw for k, v in flops.items()} if bw else {}
    spec_per = {}
    if entry:
        spec_per = {k: v / entry.bandwidth_bytes_per_s for k, v in entry.flops_per_s.items() if v}
    nvml_icrit = None
    if derived and derived["bandwidth_bytes_per_s"] and derived["flops_per_s"].get(dtype):
        nvml_icrit = derived["flops_per_s"][dtype] / derived["bandwidth_bytes_per_s"]
    run.record.i_crit = ICrit(dtype=dtype, measured=measured.get(dtype), spec=spec_per.get(dtype),
                              nvml_derived=nvml_icrit, measured_per_dtype=measured, spec_per_dtype=spec_per,
                              bandwidth_bytes_per_s=bw)
    if measured.get(dtype) is None:
        run.unmeasured.append(Unmeasured("i_crit.measured", f"needs measured {dtype} FLOP/s and bandwidth"))


def _load_target(run: _Run, name: str, dtype: str):
    from scylla_impl.target import Target

    try:
        return Target.load(name, dtype=dtype, device=str(run.device))
    except ScyllaError as err:
        run.unmeasured.append(Unmeasured("knee", f"target {name!r} could not be loaded: {err}"))
    except Exception as err:  # an adapter bug must not cost the rest of the profile
        run.unmeasured.append(Unmeasured("knee", f"target {name!r} failed to load: {type(err).__name__}: {err}"))
    return None


def _knee(run: _Run, options: ProfileOptions, progress: ProgressBar) -> None:
    plan = run.plan
    # The budget covers loading the target too: on a busy machine that alone takes a while.
    deadline = None if plan.knee_budget_s is None else time.perf_counter() + plan.knee_budget_s
    target = _load_target(run, options.target, options.dtype)
    progress.update(1, desc="load target")
    if target is None:
        return
    grid = knee_mod.knee_grid(plan.knee_batches, plan.knee_tokens, plan.knee_max_in_flight)
    timer = Timer(run.device, clock="wall")
    try:
        points, skipped = knee_mod.measure_knee(
            target, grid, prefix_tokens=plan.prefix_tokens, timer=timer, warmup=plan.knee_warmup,
            reps=plan.knee_reps, deadline=deadline,
            on_point=lambda b, n: progress.update(1, desc=f"verify b={b} n={n}"),
            on_round=lambda r, reps: progress.update(0, desc=f"verify round {r}/{reps}"),
        )
    except Exception as err:
        run.unmeasured.append(Unmeasured("knee", f"verify forward failed: {type(err).__name__}: {err}"))
        return
    if skipped:
        progress.update(len(skipped), desc="verify (budget spent)")
        run.unmeasured.append(Unmeasured(
            "knee.grid", f"{len(skipped)} of {len(grid)} grid points skipped: they would have overrun the "
                         f"plan's {plan.knee_budget_s:.0f}s knee budget (machine busy?); first skipped (b, n) = "
                         f"{tuple(skipped[0])}"))
    if len(points) < 3:
        run.unmeasured.append(Unmeasured("knee", f"only {len(points)} verify points measured; a fit needs 3"))
        return
    stats = knee_mod.ModelStats.of(target)
    rows, summary_rows = [], []
    for p in points:
        flops, nbytes = knee_mod.verify_cost(stats, p.batch_size, p.tree_tokens, p.prefix_tokens)
        rows += [{**r, "flops_est": flops, "bytes_est": nbytes} for r in p.rows()]
        summary_rows.append({"batch_size": p.batch_size, "tree_tokens": p.tree_tokens,
                             "tokens_in_flight": p.tokens_in_flight, "seconds": p.seconds,
                             "flops": flops, "bytes": nbytes})
    run.tables["knee"] = rows
    run.knee_rows = summary_rows
    fit = knee_mod.fit_knee((p.batch_size, p.tree_tokens, p.seconds) for p in points)
    info = target.info
    run.record.knee = Knee(
        target={"name": info.name, "fingerprint": info.fingerprint, "dtype": options.dtype,
                "num_layers": info.num_layers, "hidden_size": info.hidden_size, "vocab_size": info.vocab_size},
        prefix_tokens=points[0].prefix_tokens,
        grid=[list(bn) for bn in grid],
        skipped=[list(bn) for bn in skipped],
        clock=timer.clock_name,
        fit=fit.to_json(),
        points=[{"batch_size": r["batch_size"], "tokens": r["tree_tokens"], "seconds": r["seconds"]}
                for r in summary_rows],
    )
    run.record.knee_tokens = max(1, int(fit.knee_tokens))
    if fit.censored:
        run.unmeasured.append(Unmeasured(
            "knee.exact", f"the fitted knee is censored {fit.censored} the measured range "
                          f"{fit.measured_range[0]}..{fit.measured_range[1]} tokens in flight"))
    del target
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def _policy(run: _Run, depth: int) -> None:
    knee = run.record.knee_tokens
    run.record.topk_policy_rule = {
        "formula": "largest top_k <= max_top_k with batch_size * total_tokens(top_k, depth) <= knee_tokens; "
                   "total_tokens(k, D) = min(k + (D-1)k^2 + 1, max(D + 1, round(0.6 k^2)))",
        "tokens_per_topk_squared": policy_mod.TOKENS_PER_TOPK_SQUARED,
        "max_top_k": policy_mod.MAX_TOP_K,
        "depth": depth,
    }
    if not knee:
        run.unmeasured.append(Unmeasured("topk_policy", "no verify knee was measured"))
        return
    run.record.topk_policy = [e.to_json() for e in policy_mod.policy_table(knee, depth=depth)]


# -- writing ---------------------------------------------------------------------------------


# Errors that mean the disk, not the plot: they must fail the write, not be noted and skipped.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                          errno.EFBIG})


def _write_outputs(run: _Run, out: Path, sampler: NvmlSampler) -> None:
    """Write every file into a staging folder beside or inside `out`, then move them in with
    profile.json last: a failure (a full disk) leaves `out` as it was, with no temp files."""
    if sampler.samples:
        run.tables["nvml"] = sampler.records()
    made = _missing_dirs(out.parent)
    staging = (out if out.is_dir() else out.parent) / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():  # left by a killed run that had this pid
            shutil.rmtree(staging)
        staging.mkdir()
        _write_staged(run, staging)
        if out.is_dir():
            for f in sorted(staging.iterdir(), key=lambda f: f.name == PROFILE_FILE):
                os.replace(f, out / f.name)
            staging.rmdir()
        else:
            os.replace(staging, out)  # the whole folder appears at once
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()  # only folders this run created, and only while empty
        if isinstance(err, OSError):
            raise ScyllaError(f"{os_error(err, 'write the profile to', out)}; nothing was written: "
                              "run the profile again") from None
        raise


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _write_staged(run: _Run, staging: Path) -> None:
    record = run.record
    for name, rows in run.tables.items():
        if not rows:
            continue
        pd.DataFrame(rows).to_parquet(staging / f"{name}.parquet", index=False)
        record.tables[name] = f"{name}.parquet"
    from roofline.figure import plot_profile  # here, not at the top: matplotlib is slow to import

    try:
        figures = plot_profile(ProfileDoc(staging / PROFILE_FILE, record.to_json()), run.knee_rows,
                               staging / "roofline")
        record.figures = [p.name for p in figures]
    except Exception as err:  # a plotting problem must not lose the measurements
        if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
            raise
        run.unmeasured.append(Unmeasured("figures", f"{type(err).__name__}: {err}"))
    record.unmeasured = [u.to_json() for u in dict.fromkeys(run.unmeasured)]  # once each, in order
    (staging / PROFILE_FILE).write_text(json.dumps(record.to_json(), indent=2, default=str) + "\n")


def _planned_steps(plan: Plan, device: torch.device) -> int:
    """Progress-bar length: one step per bandwidth cell, cross-check, dtype, target load, knee point."""
    grid = knee_mod.knee_grid(plan.knee_batches, plan.knee_tokens, plan.knee_max_in_flight)
    backends = sum(bw_mod.backend_unavailable(b, device) is None for b in bw_mod.BACKENDS)
    modes = sum(mm_mod.mode_unavailable(m, device) is None for m in mm_mod.MODES.values())
    cross_check = 1 if device.type == "cpu" else 0
    return len(plan.bw_llc_multiples) * len(bw_mod.KERNELS) * backends + cross_check + modes + 1 + len(grid)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# -- checks before measuring ------------------------------------------------------------------

_TARGET_HINT = "give 'default', a Hugging Face model folder (config.json, weights, tokenizer files) or a hub id"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def check_options(options: ProfileOptions) -> torch.device:
    """Every check that can fail on the user's input, before a second is spent measuring:
    the profile writes its files and loads the target only after minutes of timing."""
    if options.dtype not in dtypes.CHOICES:
        raise ScyllaError(f"--dtype {options.dtype}: choose one of {', '.join(dtypes.CHOICES)}")
    if options.depth < 1:
        raise ScyllaError(f"--depth must be at least 1, got {options.depth}")
    device = resolve_device(options.device)
    check_writable_folder(options.out, "--out")
    check_target(options.target)
    return device


def check_target(name: str) -> None:
    """A target that cannot load would only show after the bandwidth and compute phases; a
    folder that is not a model is a mistake to report, not a knee to leave unmeasured. The
    loader's own checks first (the default model fetched or repaired now), then what it would
    only find while loading: the architecture, the weights and the tokenizer."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from scylla_impl.target import load_tokenizer
    from scylla_impl.target_path import model_path

    path = model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise ScyllaError(f"--target {name}: its config does not load ({first_line(err)}); "
                          f"{_TARGET_HINT}") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ScyllaError(f"--target {name}: a '{config.model_type}' model is not a decoder-only causal LM; "
                          "the verify knee needs one (Llama, Qwen2, Gemma, GPT-2 style)")
    folder = Path(path)
    if folder.is_dir():  # a hub id's files are checked by transformers as they arrive
        weights = [f for f in _WEIGHT_FILES if (folder / f).is_file()]
        if not weights:
            raise ScyllaError(f"--target {name}: no weights in it (model.safetensors or pytorch_model.bin); "
                              f"{_TARGET_HINT}")
        for shard in _safetensors_shards(folder, weights[0]):
            from scylla_impl.embedded import safetensors_problem

            problem = safetensors_problem(shard) if shard.is_file() else f"{shard.name} is missing"
            if problem:
                raise ScyllaError(f"--target {name}: {problem}; copy the model folder again")
    load_tokenizer(path, name)


def _safetensors_shards(path: Path, weights: str) -> list[Path]:
    if weights == "model.safetensors":
        return [path / weights]
    if weights == "model.safetensors.index.json":
        try:
            index = json.loads((path / weights).read_text())
            return [path / f for f in sorted(set(index["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ScyllaError(f"--target {path}: {weights} is unreadable; copy the model folder again") from None
    return []  # pickled weights: no header to check without unpickling them


def run_profile(options: ProfileOptions, *, device: torch.device | None = None) -> dict[str, Any]:
    """Measure, write DIR/profile.json + tables + figure, and return the document.
    `device`: what `check_options(options)` returned, when the caller checked already."""
    if device is None:
        device = check_options(options)
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    plan = options.plan or PLANS[(device.type, options.quick)]
    facts = collect_device_facts(device)
    # Other processes on the CPUs slow and skew every timing (torch's OpenMP threads stall
    # at barriers when a core is taken); the load before and after says how far to trust them.
    record = ProfileRecord(
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        options={"device": options.device, "target": options.target, "dtype": options.dtype,
                 "quick": options.quick, "depth": options.depth, "plan": dataclasses.asdict(plan)},
        device=facts.to_json(),
        machine_load={"loadavg_start": _loadavg(), "cpus_available": facts.cpu.cpus_available})
    run = _Run(device=device, facts=facts, plan=plan, record=record, unmeasured=list(facts.unmeasured))
    progress = ProgressBar("profile", "start", _planned_steps(plan, device), unit="steps", mode=options.progress)
    sampler = NvmlSampler(interval_s=0.1, devices=None)
    if not sampler.available:
        run.unmeasured.append(Unmeasured("nvml_samples", sampler.reason or "no GPU"))

    phases: list[tuple[str, Callable[[], None]]] = [
        ("bandwidth", lambda: _bandwidth(run, progress)),
        ("compute", lambda: _compute(run, progress)),
        ("dtype", lambda: _resolve_dtype(run, options)),
        ("i_crit", lambda: _spec_and_icrit(run, options.dtype)),
        ("knee", lambda: _knee(run, options, progress)),
        ("policy", lambda: _policy(run, options.depth)),
    ]
    try:
        with sampler:
            for name, fn in phases:
                t0 = time.perf_counter()
                with phase(f"profile.{name}"):
                    fn()
                record.phase_seconds[name] = time.perf_counter() - t0
        record.nvml = sampler.summary()
        record.machine_load["loadavg_end"] = _loadavg()
        record.phase_seconds["total"] = time.perf_counter() - started
        _write_outputs(run, Path(options.out), sampler)
    finally:
        progress.close()
    return record.to_json()
