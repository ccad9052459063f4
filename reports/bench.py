"""`nox -s bench`: the main job. Profile, sweep, report, micro-benchmarks, regression checks.

    python -m reports.bench [--full] [--out bench-results] [--update-baseline] [--plant shrink-tree] ...

Steps, each a subprocess of the public CLI so the job exercises exactly what users run:
0. the trained default drafts (scylla_impl/trained.py): trained on the first run on a
   machine (the engine's recipe, minutes per draft) and reused afterwards;
1. `scylla profile --quick` -> OUT/profile (its verify latency curve prices top_k auto's trees);
2. `scylla sweep` on the embedded default target: AR and each method, a few prompts from
   each of the six datasets, batch 1 and 4, a fixed top_k on the preset's tree (PRESETS:
   `regression` by default, `--full` for the 60-token tree) and top_k auto (the
   throughput-optimal tree per batch size, roofline/tree_policy.py), each speculative
   cell's batches also decoded by AR alongside (`--paired-ar`) -> OUT/sweep;
3. `scylla report` -> OUT/report.html, and a summary table on stdout;
4. pytest-benchmark micro-benchmarks (tests/benchmarks) compared with
   reports/bench_micro_baseline.json where it was made on this kind of machine
   (reports/micro_check.py);
5. the sweep's figures (tau at T=0, spec/AR throughput ratios) against the preset's
   reports/bench_baseline*.json, and top_k auto's predicted spec/AR against the measured
   (reports/regression.py says how).
A regression exits 1 with one line per failing figure. The first run on a machine that passes
records the machine's own baselines in SCYLLA_HOME, and later runs there check against those
(reports/machine_baseline.py). `--update-baseline` rewrites the committed baselines (and the
machine's) from this run instead of comparing; `--update-machine-baseline` the machine's alone.

`--plant shrink-tree` (or SCYLLA_BENCH_PLANT=shrink-tree) runs the sweep with a smaller
tree than the one it records in its configuration: a deliberate regression, to show the
check catches one (tests/test_report_bench.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from reports import machine_baseline, regression, tables
from reports.load import load_results
from reports.micro_check import compare_micro, read_micro
from roofline.profile_doc import PROFILE_FILE, read_profile_doc
from scylla_impl.methods import TRAINED
from workloads.errors import ScyllaError

REPO = Path(__file__).resolve().parent.parent
MICRO_BASELINE = Path(__file__).resolve().parent / "bench_micro_baseline.json"
DATASETS = "mt_bench,humaneval,gsm8k,alpaca,cnn_dm,natural_questions"
# A trained method's draft again under a second name, with a prompt-lookup chain of that many
# tokens grafted under its trees (`scylla sweep --lookup-tokens`): the report then shows what
# the chain adds to the same draft, dataset by dataset.
CHAINED = {"scylla_lookup": ("scylla", 4)}
METHODS = TRAINED + tuple(CHAINED)
# What each mode sweeps (AR and each method, temperature 0), and the committed baseline it
# compares with. `regression`, the default, answers "did the engine or the drafts regress" in
# minutes: every dataset and both batch sizes, on the tree the tie rule gives top_k 4
# (10 tokens; roofline/policy.py) and on top_k auto. `full` is the 60-token tree the project's figures come from.
_REGRESSION = dict(datasets=DATASETS, batch_sizes="1,4", top_k="4,auto", depths="5", total_tokens="tied",
                   prompts=4, max_new_tokens=16, paired_ar=True, baseline="bench_baseline.json")
PRESETS = {
    "regression": _REGRESSION,
    "full": dict(_REGRESSION, total_tokens="60", baseline="bench_baseline_full.json"),
}
# The options the job hands to `scylla sweep` under the same names: one table, which the
# argument parser, the configuration the baseline records and the sweep command all read.
_PRESET = "default: the preset's"
SWEEP_OPTIONS: dict[str, dict] = {
    "datasets": dict(help=_PRESET),
    "batch_sizes": dict(help=_PRESET),
    "top_k": dict(help=_PRESET),
    "depths": dict(help=_PRESET),
    "total_tokens": dict(help=_PRESET),
    "prompts": dict(type=int, help="per dataset; batch 4 needs at least 4 (" + _PRESET + ")"),
    "max_new_tokens": dict(type=int, help=_PRESET),
    "turns": dict(default="first", choices=("first", "all"), help="MT-bench turns"),
    "dtype": dict(default="auto", help="target dtype, or auto (the profile's: the faster of bf16/fp32 for decoding)"),
    # A ratio over AR decoded minutes earlier moved by -0.31..+0.19 on a busy 2-core host
    # (README, --paired-ar), beyond the check's 25%; over AR on the cell's own batches it holds.
    "paired_ar": dict(action=argparse.BooleanOptionalAction,
                      help="each speculative cell's spec/AR divides by AR decoded alongside its own batches "
                           "(default: on, in every preset)"),
}
# A planted regression: the tree a buggy commit might build instead of the requested one.
PLANTS = {"shrink-tree": {"depths": "2", "total_tokens": "6"}}


def _say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def run_step(cmd: list[str], what: str, written: Path | None = None) -> None:
    """Run a step; a non-zero exit ends the job, unless the step still wrote `written` (a sweep
    with failed cells): those failures are the regression check's to report."""
    _say(f"{what}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0 and not (proc.returncode == 1 and written is not None and written.is_file()):
        raise ScyllaError(f"{what} failed (exit {proc.returncode}); its output is above")
    _say(f"{what} took {time.perf_counter() - t0:.0f} s")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def scylla_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def resolve_drafts(given: list[str], methods=METHODS, untrained: bool = False,
                   device: str = "cpu") -> tuple[list[str], bool]:
    """METHOD=SPEC per speculative method, and whether they are trained checkpoints.

    Order: --draft flags, then $SCYLLA_BENCH_DRAFTS ("eagle2=DIR,eagle3=DIR,scylla=DIR"),
    then the engine's trained default drafts (scylla_impl/trained.py), which are trained
    on first use and kept in SCYLLA_HOME: the first run of the job on a fresh machine
    includes that training, on `device`. `--untrained` asks for random-init drafts instead (a quick
    plumbing run); the job then says so loudly, and never does it on its own. A chained method
    (CHAINED) not given a draft of its own runs its base method's.
    """
    specs = list(given)
    env = os.environ.get("SCYLLA_BENCH_DRAFTS", "")
    if not specs and env:
        specs = [s.strip() for s in env.split(",") if s.strip()]
    named = {s.split("=", 1)[0] for s in specs}
    base = {m: CHAINED[m][0] if m in CHAINED and m not in named else m for m in methods}
    wanted = list(dict.fromkeys(base.values()))
    specs = [s for s in specs if s.split("=", 1)[0] in wanted]
    missing = [m for m in wanted if m not in {s.split("=", 1)[0] for s in specs}]
    if untrained:
        specs += [f"{m}=random:{m}" for m in missing]
    elif missing:
        specs += _default_drafts(missing, device)
    by_method = dict(s.split("=", 1) for s in specs)
    resolved = [f"{m}={by_method[base[m]]}" for m in methods]
    return resolved, not any(s.split("=", 1)[1].startswith(("random:", "oracle")) for s in resolved)


def _default_drafts(methods: list[str], device: str) -> list[str]:
    """METHOD=DIR of the engine's trained default draft of each method, trained here if missing."""
    from harness.quiet import quiet_libraries
    from scylla_impl.target import Target
    from scylla_impl.trained import DEFAULT_DRAFTS, ensure_trained_draft, trained_draft

    quiet_libraries()
    target = Target.load("default", dtype="float32", device=device)
    specs = []
    for m in methods:
        if m not in DEFAULT_DRAFTS:
            raise ScyllaError(f"no default draft for method {m!r}: pass --draft {m}=DIR")
        if trained_draft(target, m) is None:
            _say(f"training the default {m} draft (first run on this machine; it is kept for later runs)")
        t0 = time.perf_counter()
        specs.append(f"{m}={ensure_trained_draft(target, m, progress='auto')}")
        if time.perf_counter() - t0 > 5:
            _say(f"{m} draft ready after {time.perf_counter() - t0:.0f} s")
    del target
    return specs


def sweep_config(args, drafts: list[str]) -> dict:
    """The sweep as recorded in the baseline (the plant, if any, is deliberately not in it)."""
    return {
        "target": "default",
        "methods": ",".join(args.methods),
        # Folder names, not absolute paths: the same drafts on another checkout compare equal.
        "drafts": sorted(d.split("=", 1)[0] + "=" + Path(d.split("=", 1)[1]).name if "random:" not in d else d
                         for d in drafts),
        "temperatures": "0",
        "lookup_tokens": ",".join(f"{m}={CHAINED[m][1]}" for m in args.methods if m in CHAINED),
        **{name: getattr(args, name) for name in SWEEP_OPTIONS},
    }


def sweep_command(cfg: dict, drafts: list[str], out: Path, profile: Path | None, plant: str | None,
                  threads: int) -> list[str]:
    run = dict(cfg, drafts=drafts)
    if plant:
        run.update(PLANTS[plant])
    cmd = scylla_cli("sweep", "--target", run["target"], "--methods", "ar," + run["methods"],
                  "--temperatures", run["temperatures"], "--out", str(out), "--threads", str(threads))
    for name in SWEEP_OPTIONS:
        if isinstance(run[name], bool):  # an on/off flag of `scylla sweep`
            cmd += [_flag(name)] if run[name] else []
        else:
            cmd += [_flag(name), str(run[name])]
    for d in run["drafts"]:
        cmd += ["--draft", d]
    for chain in filter(None, run["lookup_tokens"].split(",")):
        cmd += ["--lookup-tokens", chain]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    return cmd


def micro_benchmarks(out: Path, update: bool, skip: bool, threads: int, dtype: str,
                     baseline: Path) -> regression.Verdict:
    """Run tests/benchmarks, then check them against `baseline` (reports/micro_check.py);
    `update` rewrites the committed MICRO_BASELINE instead."""
    v = regression.Verdict()
    if skip:
        _say("micro-benchmarks skipped (--skip-micro)")
        return v
    result = out / "micro.json"
    cmd = [sys.executable, "-m", "pytest", "tests/benchmarks/test_micro.py", "-m", "bench", "-q", "-p", "no:cacheprovider",
           "--benchmark-min-rounds=5", "--benchmark-max-time=1", f"--benchmark-json={result}",
           "--benchmark-columns=min,median,max,rounds"]
    _say("micro-benchmarks: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, SCYLLA_BENCH_THREADS=str(threads), SCYLLA_BENCH_DTYPE=dtype))
    if proc.returncode != 0:
        v.failures.append(f"micro-benchmarks: pytest exited {proc.returncode} (a benchmark failed; its output is above)")
    elif update:
        shutil.copyfile(result, MICRO_BASELINE)
        _say(f"wrote {MICRO_BASELINE.relative_to(REPO)}")
    elif not baseline.is_file():
        _say(f"no {baseline.name} yet: micro-benchmarks run without a comparison")
    else:
        v = compare_micro(read_micro(result), read_micro(baseline))
    return v


def record_own_baselines(sweep: machine_baseline.Choice, micro: machine_baseline.Choice, figures: dict,
                         micro_result: Path | None, committed: Path, asked: bool) -> None:
    """Write this machine's baselines (where a choice has one: not under --baseline or a plant)
    from a run that passed the `committed` ones, where it has none yet or a superseded one; or
    wherever `asked` (--update-baseline, --update-machine-baseline)."""
    written = []
    try:
        if sweep.own is not None and (asked or sweep.records):
            machine_baseline.record(figures, sweep.own, committed)
            written.append(f"{sweep.own} (tau, trees and spec/AR ratios)")
        if micro.own is not None and micro_result is not None and micro_result.is_file() and (asked or micro.records):
            machine_baseline.record(json.loads(micro_result.read_text()), micro.own, MICRO_BASELINE)
            written.append(f"{micro.own} (micro-benchmarks)")
    except ScyllaError as err:  # the run's results and its check stand; only the next run's baseline is missing
        _say(f"note: this machine's baselines were not recorded: {err}")
    if written:
        _say("recorded this machine's baselines: " + ", ".join(written) + ". Later runs here check against them: "
             "tau exactly with these drafts, ratios and times on this kind of machine (`--baseline FILE` checks "
             "against FILE alone)")


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def choose_threads(requested: str) -> int:
    """Torch threads for the sweep and micro-benchmarks: `auto` is roofline.cpu_threads' rule
    (every CPU, or one when other processes already keep them busy)."""
    from roofline.cpu_threads import auto_threads

    return max(1, int(requested)) if requested != "auto" else auto_threads()[0]


def choose_dtype(requested: str, profile: Path | None) -> str:
    """The target dtype: `auto` takes the one the profile measured its verify knee in, which
    `profile --dtype auto` chose as the faster of bf16 and fp32 for decoding this target
    (scylla_impl/target.py, `auto_dtype`): bf16 on GPUs; fp32 on a CPU that emulates bf16
    (9-25x slower there); elsewhere whichever the model itself decodes faster, timed once
    (fp32 on these AVX-512 BF16 CPUs). The sweep's top_k auto then prices its trees with a
    verify curve measured in the dtype it runs in. Without a profile the sweep's own `auto`
    decides, by the same rule.
    """
    if requested != "auto" or profile is None:
        return requested
    return read_profile_doc(profile).dtype or requested


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="nox -s bench --", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench-results")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="regression",
                    help="regression (default, minutes) or full (the 60-token tree, about 13 minutes on 2 CPU cores once the drafts exist)")
    ap.add_argument("--full", dest="preset", action="store_const", const="full", help="same as --preset full")
    ap.add_argument("--update-baseline", action="store_true",
                    help="rewrite the committed baselines (and this machine's) from this run")
    ap.add_argument("--update-machine-baseline", action="store_true",
                    help="rewrite this machine's own baselines from this run, checked against the committed ones "
                         "(reports/machine_baseline.py)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="check against this file alone (default: this machine's own baseline once a run "
                         "recorded it, else the preset's reports/bench_baseline*.json)")
    ap.add_argument("--draft", action="append", default=[], metavar="METHOD=SPEC",
                    help="draft per method (checkpoint folder); default $SCYLLA_BENCH_DRAFTS, else the trained defaults")
    ap.add_argument("--untrained", action="store_true",
                    help="random-init drafts for methods without --draft (quick plumbing run; tau is meaningless)")
    ap.add_argument("--methods", type=lambda s: tuple(s.split(",")), default=METHODS)
    for name, option in SWEEP_OPTIONS.items():
        ap.add_argument(_flag(name), **option)
    ap.add_argument("--threads", default="auto", help="torch threads, or auto (1 when the machine is already busy)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help=f"allowed drop of spec/AR ratios (default: the baseline's, else {regression.DEFAULT_RATIO_TOLERANCE})")
    ap.add_argument("--plant", choices=sorted(PLANTS), default=os.environ.get("SCYLLA_BENCH_PLANT") or None,
                    help="run with a deliberate regression (also $SCYLLA_BENCH_PLANT)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile (then top_k auto cannot run)")
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--resume", action="store_true", help="reuse OUT/profile and finished sweep cells")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    for key, value in preset.items():
        if key != "baseline" and getattr(args, key) is None:
            setattr(args, key, value)
    args.own_baselines = args.baseline is None  # a named baseline is checked alone
    if args.baseline is None:
        args.baseline = Path(__file__).resolve().parent / preset["baseline"]
    if args.update_machine_baseline and not args.own_baselines:
        ap.error("--update-machine-baseline writes this machine's baselines, which --baseline sets aside")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        failures = run_job(args)
    except ScyllaError as err:
        print(f"error: {err}", file=sys.stderr)
        _say(f"took {time.perf_counter() - t_start:.0f} s")
        return 1
    _say(f"report: {args.out / 'report.html'}")
    _say(f"took {time.perf_counter() - t_start:.0f} s")
    if failures:
        print(f"REGRESSION ({len(failures)}):", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


def run_job(args: argparse.Namespace) -> list[str]:
    """The job's steps in order; returns the regression check's failures (an error raises)."""
    if args.update_baseline and args.plant:
        raise ScyllaError("refusing to write a baseline from a run with a planted regression")
    out = _fresh_out(args.out, args.resume)
    drafts, trained = resolve_drafts(args.draft, args.methods, args.untrained)
    _announce(drafts, trained, args.plant)
    threads = choose_threads(args.threads)
    _say(f"torch threads: {threads} on {os.cpu_count()} CPUs")

    profile = None if args.no_profile else out / "profile"
    if profile is not None and not (args.resume and (profile / PROFILE_FILE).is_file()):
        run_step(scylla_cli("profile", "--quick", "--dtype", "auto", "--out", str(profile)), "profile")
    args.dtype = choose_dtype(args.dtype, profile)
    _say(f"target dtype: {args.dtype}")
    cfg = sweep_config(args, drafts)
    sweep_base, micro_base = _choose_baselines(args, cfg)

    sweep_dir = out / "sweep"
    cmd = sweep_command(cfg, drafts, sweep_dir, profile, args.plant, threads)
    if args.resume and sweep_dir.exists():
        cmd.append("--resume")
    run_step(cmd, "sweep", written=sweep_dir / "results.parquet")
    report_cmd = scylla_cli("report", str(sweep_dir), "-o", str(out / "report.html"), "--title", "scylla-bench: nox -s bench")
    if profile is not None:
        report_cmd += ["--profile", str(profile)]
    run_step(report_cmd, "report")
    cells = pd.read_parquet(sweep_dir / "results.parquet")
    print("\n" + regression.summary_table(cells) + "\n", flush=True)

    failures = _pricing_failures(sweep_dir, args.update_baseline)
    micro = micro_benchmarks(out, args.update_baseline, args.skip_micro, threads, args.dtype, micro_base.path)
    for n in micro.notes:
        _say("note: " + n)
    failures += micro.failures

    figs = regression.figures(cells)
    (out / "figures.json").write_text(json.dumps(figs, indent=1, sort_keys=True) + "\n")
    tol = args.tolerance if args.tolerance is not None else regression.DEFAULT_RATIO_TOLERANCE
    base = regression.make_baseline(figs, cfg, tol, _git_commit())
    sweep_base, sweep_failures = _check_figures(args, figs, base, cfg, sweep_base)
    failures += sweep_failures
    asked = args.update_baseline or args.update_machine_baseline
    if asked or (trained and not failures):
        # --skip-micro under --resume would leave an earlier run's micro.json in OUT.
        micro_result = None if args.skip_micro else out / "micro.json"
        record_own_baselines(sweep_base, micro_base, base, micro_result, args.baseline, asked)
    return failures


def _fresh_out(out: Path, resume: bool) -> Path:
    """OUT, emptied for a fresh run: stale cells must not mix into the figures. Only a folder this
    job wrote is removed, never whatever else --out happens to point at."""
    if out.exists() and not resume:
        if any(out.iterdir()) and not (out / "sweep").exists() and not (out / "profile").exists():
            raise ScyllaError(f"{out} exists and is not a bench-results folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _announce(drafts: list[str], trained: bool, plant: str | None) -> None:
    if not trained:
        _say("=" * 72)
        _say("UNTRAINED DRAFTS: " + ", ".join(d for d in drafts if "random:" in d or "oracle" in d) + ".")
        _say("tau says nothing about real acceptance; drop --untrained (and --draft) to use the trained")
        _say("default drafts. The baseline records which drafts it was made with.")
        _say("=" * 72)
    if plant:
        _say(f"PLANTED REGRESSION '{plant}': the sweep runs with {PLANTS[plant]}")


def _choose_baselines(args: argparse.Namespace, cfg: dict) -> tuple[machine_baseline.Choice, machine_baseline.Choice]:
    """The sweep's and the micro-benchmarks' baselines (this machine's own where it has them), the
    sweep's refused before the sweep runs if it records another sweep."""
    own = args.own_baselines and not args.plant  # a planted run neither reads nor writes this machine's
    read_own = not args.update_machine_baseline
    sweep_base = machine_baseline.choose(machine_baseline.sweep_path(args.preset, args.dtype) if own else None,
                                         args.baseline, cfg, read_own)
    micro_base = machine_baseline.choose(machine_baseline.micro_path(args.dtype) if own else None, MICRO_BASELINE,
                                         read_own=read_own)
    for choice in (sweep_base, micro_base):
        if choice.why_not_own:
            _say(f"note: {choice.why_not_own}; checking against {_shown(choice.path)} (a passing run records it anew)")
    if not args.update_baseline and sweep_base.path.is_file():
        _say(f"baseline: {_shown(sweep_base.path)}" + (" (this machine's own)" if sweep_base.is_own else ""))
        regression.check_same_sweep(cfg, regression.read_baseline(sweep_base.path))
    return sweep_base, micro_base


def _pricing_failures(sweep_dir: Path, update_baseline: bool) -> list[str]:
    """top_k auto's predicted spec/AR against the measured; only notes when rewriting the baseline."""
    results = load_results([sweep_dir])
    priced = regression.pricing(tables.auto_prediction_table(results.ok, results.predictions))
    for n in priced.notes + (priced.failures if update_baseline else []):
        _say("note: " + n)
    return [] if update_baseline else priced.failures


def _check_figures(args: argparse.Namespace, figs: dict, base: dict, cfg: dict,
                   sweep_base: machine_baseline.Choice) -> tuple[machine_baseline.Choice, list[str]]:
    """Write the baseline (--update-baseline), or compare the figures with it. Returns the baseline
    compared with (the committed one where this machine's no longer applies) and the failures."""
    if args.update_baseline:
        args.baseline.write_text(json.dumps(base, indent=1) + "\n")
        _say(f"wrote {args.baseline} ({len(base['tau'])} tau figures, {len(base['ratio'])} ratios)")
        return sweep_base, []
    if not sweep_base.path.is_file() and args.preset != "regression":
        _say(f"NOT CHECKED: no baseline for the {args.preset} preset at {args.baseline}; the figures are in "
             f"{args.out / 'figures.json'} (make one with `nox -s bench -- --preset {args.preset} --update-baseline`)")
        return sweep_base, []
    try:
        verdict = regression.compare(figs, regression.read_baseline(sweep_base.path), cfg, args.tolerance)
    except ScyllaError as err:
        if not sweep_base.is_own:
            raise
        # Another dataset file measured here since: this machine's figures no longer apply.
        _say(f"note: this machine's baseline {sweep_base.path} does not apply ({err}); checking against "
             f"{_shown(args.baseline)} (a passing run records it anew)")
        sweep_base = machine_baseline.Choice(args.baseline, sweep_base.own, False)
        verdict = regression.compare(figs, regression.read_baseline(args.baseline), cfg, args.tolerance)
    for n in verdict.notes:
        _say("note: " + n)
    if verdict.ok:
        _say(f"sweep figures: {len(figs['tau'])} tau and {len(figs['ratio'])} ratios within the baseline")
    return sweep_base, verdict.failures


if __name__ == "__main__":
    sys.exit(main())
