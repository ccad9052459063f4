"""Decode speed on the embedded default at batch 1: AR vs speculative, measured in one run
so the ratios hold on a noisy machine. Prints the per-step phase split and the share of a
step spent outside the two models' forwards (tree build + acceptance + cache commit).

    nox -s speed                                  # dtype auto, 3 MT-bench prompts, 128 new tokens
    SCYLLA_BENCH_DTYPE=float32 nox -s speed       # a fixed dtype
    SCYLLA_BENCH_PROMPTS=1 SCYLLA_BENCH_THREADS=2 nox -s speed
"""

import os

import numpy as np
import pytest
import torch

from reports.speed import BOOKKEEPING  # phases that are neither model's forward

pytestmark = pytest.mark.bench

NEW_TOKENS = 128
N_PROMPTS = int(os.environ.get("SCYLLA_BENCH_PROMPTS", "3"))
DTYPE = os.environ.get("SCYLLA_BENCH_DTYPE", "auto")  # the faster of bf16 and fp32 here
TREES = {"default": (10, 5, 60), "small": (4, 4, 16)}
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def setup(shared_eval_dir):
    from harness.quiet import quiet_libraries
    from scylla_impl.target import Target
    from workloads import load_dataset
    from workloads.chat import prompt_token_ids

    quiet_libraries()
    torch.manual_seed(0)
    if os.environ.get("SCYLLA_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SCYLLA_BENCH_THREADS"]))
    target = Target.load("default", dtype=DTYPE)
    prompts = [prompt_token_ids(target.tokenizer, p) for p in load_dataset("mt_bench", shared_eval_dir, n=N_PROMPTS)]
    return target, prompts


def _run(target, prompts, draft, config):
    from scylla_impl.decode import generate

    emitted = seconds = 0.0
    phases: dict[str, list[float]] = {}
    for p in prompts:
        result = generate(target, [p], draft, config)
        emitted += result.stats.emitted.sum()
        seconds += result.stats.decode_s
        for name, values in result.stats.phase_s.items():
            phases.setdefault(name, []).extend(values.tolist())
        phases.setdefault("step", []).extend(result.stats.step_s.tolist())
        tau = result.stats.tau
    total = {k: float(np.sum(v)) for k, v in phases.items()}
    return {"tokens_per_s": emitted / seconds, "tau": tau, "phases": {k: float(np.median(v)) for k, v in phases.items()},
            "bookkeeping": sum(total.get(k, 0.0) for k in BOOKKEEPING) / total["step"]}


@pytest.mark.parametrize("case", ["ar", "oracle:default", "oracle:small", "random:default", "random:small"])
def test_decode_speed(benchmark, setup, case):
    from scylla_impl.decode_config import DecodeConfig
    from scylla_impl.drafts import load_draft

    target, prompts = setup
    if case == "ar":
        draft, config = None, DecodeConfig(max_new_tokens=NEW_TOKENS)
    else:
        kind, tree = case.split(":")
        k, d, n = TREES[tree]
        draft = load_draft("oracle" if kind == "oracle" else "random:scylla", target)
        config = DecodeConfig(top_k=k, depth=d, total_tokens=n, max_new_tokens=NEW_TOKENS)
    RESULTS[case] = benchmark.pedantic(_run, args=(target, prompts, draft, config), rounds=1, iterations=1)
    assert RESULTS[case]["tokens_per_s"] > 0


def test_report_ratios(setup):
    if "ar" not in RESULTS:
        pytest.skip("run with the decode-speed cases")
    ar = RESULTS["ar"]["tokens_per_s"]
    print(f"\n{DTYPE}, {N_PROMPTS} MT-bench prompts, {NEW_TOKENS} new tokens, batch 1, {torch.get_num_threads()} threads")
    print(f"{'case':16} {'tok/s':>7} {'vs AR':>6} {'tau':>5} {'bookkeeping':>11}  median step split (ms)")
    for case, r in RESULTS.items():
        ph = r["phases"]
        split = " ".join(f"{k}={1000 * v:.1f}" for k, v in ph.items())
        print(f"{case:16} {r['tokens_per_s']:7.1f} {r['tokens_per_s'] / ar:6.2f} {r['tau']:5.2f} "
              f"{100 * r['bookkeeping']:10.1f}%  {split}")
    assert RESULTS["ar"]["tau"] == 1.0
    # The engine's target: what it adds around the two models' forwards stays under 15% of a step.
    assert all(r["bookkeeping"] < 0.15 for r in RESULTS.values()), {c: r["bookkeeping"] for c, r in RESULTS.items()}
