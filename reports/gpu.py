"""`nox -s gpu`: validate the harness on an NVIDIA GPU in one command and print one summary.

    python -m reports.gpu [--device cuda[:N]] [--out gpu-results] [--draft METHOD=DIR ...] [--untrained]

Steps, each a subprocess of the public CLI, as in `nox -s bench`:
1. `scylla profile --device DEV --dtype bfloat16 --quick` -> OUT/profile: the HBM read ceiling
   from the Triton read kernel, which streams through the SMs (a copy-engine copy understates
   it: nvbandwidth's local copy reads 1.1 TB/s on a part rated 4.8), the dense bf16 matmul peak
   from a GEMM size sweep, I_crit and the verify knee;
2. the trained default drafts (trained on DEV on first use; `--untrained` for random ones);
3. two `scylla sweep --device DEV --dtype bfloat16` runs at T=0 on the embedded default: AR,
   prompt lookup and the drafts on a fixed tree (top_k 4) and on top_k auto, at the small
   batch sizes on a few prompts (OUT/sweep-small) and at batch 64 on 64 prompts (OUT/sweep-wide).
   Their lossless column is the bf16 lossless check (the near-tie rule: harness/metrics.py);
4. `scylla report` -> OUT/report.html;
5. the summary: each measured figure beside the datasheet's (roofline/spec_sheets.json) and
   the targets below, the lossless check, spec/AR by batch size, and the time of each step.

Without a CUDA GPU it says so and exits 2 having measured nothing. `--device cpu` runs the
same steps on the CPU as a check of the plumbing (the slow test does); its summary says that it
validates no GPU. Exit 1: a step failed, a cell failed, or a speculative cell was not lossless.
The hardware targets are reported, not enforced: a shared or throttled GPU misses them without
a defect in the harness.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports import tables
from reports.bench import resolve_drafts, run_step, scylla_cli
from reports.regression import summary_table
from roofline.profile_doc import ProfileDoc, read_profile_doc
from scylla_impl.methods import TRAINED
from workloads.errors import ScyllaError

REPO = Path(__file__).resolve().parent.parent
HBM_READ_TARGET = 0.90  # of the datasheet's bandwidth; the best published SM read kernels reach about 90%
MATMUL_TARGET = 0.80  # of the datasheet's dense bf16 FLOP/s; published GEMM sweeps reach 80-84%
TIME_TARGET_S = 8 * 60  # the whole job on an H100/H200, drafts already trained
DTYPE = "bfloat16"  # what a GPU decodes in; `--dtype` overrides it for the CPU plumbing check


@dataclass(frozen=True)
class SweepPart:
    """One of the job's two sweeps: each holds its own AR partners."""

    name: str
    batch_sizes: str
    prompts: int


def _say(msg: str) -> None:
    print(f"[gpu] {msg}", flush=True)


def cuda_absent(device: str) -> str | None:
    """Why this job cannot run on `device`, or None. Checked before anything is measured."""
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        return (f"no CUDA GPU here: torch {torch.__version__} ({build}) sees none, so nothing was measured. "
                "Run `nox -s gpu` on a machine with an NVIDIA GPU and its driver (SCYLLA_TORCH picks a torch "
                "wheel for its CUDA version); `-- --device cpu` checks the job's plumbing on the CPU.")
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="nox -s gpu --", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a plumbing check, not a GPU validation)")
    ap.add_argument("--out", type=Path, default=REPO / "gpu-results")
    ap.add_argument("--target", default="default", help="target model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--draft", action="append", default=[], metavar="METHOD=SPEC",
                    help="draft per method; default the trained default drafts, trained on --device on first use")
    ap.add_argument("--untrained", action="store_true", help="random-init drafts (tau is then meaningless)")
    ap.add_argument("--datasets", default="mt_bench,gsm8k")
    ap.add_argument("--small-batches", default="1,8", help="batch sizes of the small sweep")
    ap.add_argument("--small-prompts", type=int, default=8, help="prompts per dataset of the small sweep")
    ap.add_argument("--wide-batch", type=int, default=64, help="batch size (and prompts per dataset) of the wide sweep")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default=DTYPE, choices=("bfloat16", "float16", "float32"),
                    help="target dtype of the profile's knee and the sweeps")
    ap.add_argument("--data-dir", default=None, help="EAGLE-format eval files (default: the PyPI packages)")
    args = ap.parse_args(argv)
    if args.small_prompts < 1 or args.wide_batch < 1 or args.max_new_tokens < 1:
        ap.error("--small-prompts, --wide-batch and --max-new-tokens must be at least 1")
    return args


def sweep_command(args, part: SweepPart, drafts: list[str], profile: Path, out: Path) -> list[str]:
    methods = ",".join(["ar", "lookup", *(d.split("=", 1)[0] for d in drafts)])
    cmd = scylla_cli("sweep", "--target", args.target, "--device", args.device, "--dtype", args.dtype,
                     "--methods", methods, "--temperatures", "0", "--datasets", args.datasets,
                     "--batch-sizes", part.batch_sizes, "--prompts", str(part.prompts), "--top-k", "4,auto",
                     "--depths", "5", "--total-tokens", "tied", "--max-new-tokens", str(args.max_new_tokens),
                     "--turns", "first", "--profile", str(profile), "--out", str(out))
    for d in drafts:
        cmd += ["--draft", d]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return cmd


def _share(measured: float | None, spec: float | None) -> float | None:
    return measured / spec if measured and spec else None


def _fmt(value: float | None, scale: float, unit: str) -> str:
    return f"{value / scale:,.2f} {unit}" if value else "-"


def hardware_lines(doc: ProfileDoc, dtype: str = DTYPE) -> list[str]:
    """The profile's figures beside the datasheet's and the targets; matmul in `dtype`."""
    read = doc.bandwidth.get("read")
    flops = doc.flops.get(dtype)
    rows = [  # label, measured, datasheet, scale, unit, target, the profile's name for it
        ("HBM read (SM read kernel)", read, doc.spec_bandwidth, 1e12, "TB/s", HBM_READ_TARGET, "bandwidth"),
        (f"{dtype} dense matmul (GEMM sweep)", flops, doc.spec_flops.get(dtype), 1e12, "TFLOP/s", MATMUL_TARGET,
         f"flops_per_s.{dtype}"),
    ]
    lines = [f"{'':34} {'measured':>14} {'datasheet':>14} {'share':>7} {'target':>7}  verdict"]
    for label, got, spec, scale, unit, target, what in rows:
        share = _share(got, spec)
        if not got:
            verdict = "not measured: " + (doc.why_unmeasured(what) or "no reason recorded")
        elif share is None:
            verdict = "no datasheet entry for " + repr(doc.device_name)
        else:
            verdict = "met" if share >= target else "MISSED"
        lines.append(f"{label:34} {_fmt(got, scale, unit):>14} {_fmt(spec, scale, unit):>14} "
                     f"{(f'{share:.0%}' if share else '-'):>7} {f'>={target:.0%}':>7}  {verdict}")
    icrit = f"{doc.i_crit:.0f}" if doc.i_crit else "-"
    icrit_spec = f"{doc.i_crit_spec:.0f}" if doc.i_crit_spec else "-"
    lines.append(f"{'I_crit (' + (doc.i_crit_dtype or dtype) + ')':34} {icrit + ' FLOP/B':>14} {icrit_spec + ' FLOP/B':>14}")
    knee = f"{doc.knee_tokens:.0f} tokens" if doc.knee_tokens else "not found"
    lines.append(f"{'verify knee (tokens in flight)':34} {knee:>14}")
    return lines


def lossless_lines(cells: pd.DataFrame, dtype: str = DTYPE) -> tuple[list[str], int]:
    """The lossless check over every speculative cell (reports/tables.py's counts); -> (lines,
    cells not lossless or unchecked)."""
    ok = cells[cells["status"] == "ok"]
    counts = tables.lossless_table(ok)[["passed", "mismatched", "not_checked", "near_ties"]].sum()
    lines = [f"lossless ({dtype}, T=0): {counts.passed} of {counts.passed + counts.mismatched} speculative cells; "
             f"{counts.near_ties} requests parted from AR at a near-tie (its token within NEAR_TIE_ULPS of AR's: "
             "scylla_impl/decode.py)"]
    if counts.not_checked:
        lines.append(f"  {counts.not_checked} speculative cells had no AR partner to check against")
    for _, r in tables.lossless_failures(ok).iterrows():
        lines.append(f"  NOT LOSSLESS: {r['method']} {r['dataset']} b{r['batch_size']} k{r['top_k']}: "
                     f"{r['lossless_mismatches']} requests differ")
    return lines, int(counts.mismatched + counts.not_checked)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    absent = cuda_absent(args.device)
    if absent:
        print(f"error: {absent}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    out: Path = args.out
    parts = (SweepPart("sweep-small", args.small_batches, args.small_prompts),
             SweepPart("sweep-wide", str(args.wide_batch), args.wide_batch))
    try:
        if args.target != "default" and not args.untrained and len(args.draft) < len(TRAINED):
            raise ScyllaError("a --target other than the default needs --draft METHOD=DIR for each of "
                              f"{', '.join(TRAINED)}, or --untrained")
        out.mkdir(parents=True, exist_ok=True)
        if args.device == "cpu":
            _say("PLUMBING CHECK ON THE CPU: every step runs, but nothing below validates a GPU")
        t0 = time.perf_counter()
        profile = out / "profile"
        run_step(scylla_cli("profile", "--device", args.device, "--dtype", args.dtype, "--quick",
                            "--target", args.target, "--out", str(profile)), "profile")
        times["profile"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        drafts, trained = resolve_drafts(args.draft, TRAINED, args.untrained, device=args.device)
        times["drafts"] = time.perf_counter() - t0
        if not trained:
            _say("UNTRAINED DRAFTS: tau and spec/AR say nothing about real acceptance")

        for part in parts:
            t0 = time.perf_counter()
            run_step(sweep_command(args, part, drafts, profile, out / part.name), part.name,
                     written=out / part.name / "results.parquet")
            times[part.name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_step(scylla_cli("report", *(str(out / p.name) for p in parts), "--profile", str(profile),
                            "-o", str(out / "report.html"), "--title", f"scylla-bench: nox -s gpu ({args.device})"),
                 "report")
        times["report"] = time.perf_counter() - t0
        cells = pd.concat([pd.read_parquet(out / p.name / "results.parquet") for p in parts], ignore_index=True)
        doc = read_profile_doc(profile)
    except ScyllaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    total = time.perf_counter() - t_start
    loss, not_lossless = lossless_lines(cells, args.dtype)
    failed = cells[cells["status"] == "failed"]
    device_name = doc.device_name or args.device
    print("\n" + "=" * 100)
    print(f"nox -s gpu summary: {device_name} ({args.device}), {args.dtype}, target {args.target}"
          + ("  [CPU PLUMBING CHECK, NOT A GPU VALIDATION]" if args.device == "cpu" else ""))
    print("\n".join(hardware_lines(doc, args.dtype)))
    print("\n".join(loss))
    print("spec/AR by method, batch and tree, over datasets:\n" + summary_table(cells))
    for _, r in failed.iterrows():
        print(f"FAILED CELL: {r['method']} {r['dataset']} b{r['batch_size']}: {r['error']}")
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    verdict = "within" if total <= TIME_TARGET_S else "OVER"
    print(f"time: {total / 60:.1f} min ({steps}); {verdict} the {TIME_TARGET_S // 60}-min target"
          + ("" if times.get("drafts", 0) < 5 else ", draft training included"))
    print(f"report: {out / 'report.html'}")
    print("=" * 100)
    return 1 if not_lossless or len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
