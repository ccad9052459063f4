"""Where a decode step's time goes on this machine, per draft method, beside the hardware's floor.

    nox -s speed                       # the embedded default, --dtype auto, every CPU
    python -m reports.speed --dtype float32 --json speed.json
    python -m reports.speed --dtype float32 --compile    # the compiled path (scylla_impl/compiled.py)

One process, one run, so every ratio compares numbers measured minutes apart on the same
machine state:
- weight read: the profiler's read stream (roofline/bandwidth.py) over a buffer of the
  target's weight bytes: the time no AR step can beat when weights stream from memory;
- verify(n): one target forward over an n-token chain on a 200-token chat prefix, n = 1..60
  (the knee's measurement, interleaved rounds, medians); verify(1) is the AR forward;
- the AR step: a whole decode-loop step without a draft (forward, sampling, cache commit);
- per method, one draft level (`draft.expand` 1 and top_k wide, the default recipe's draft
  vocabulary) and the default tree's speculative step split into its phases; bookkeeping is
  what is neither model's forward (tree build, acceptance, cache commit).
Drafts are untrained (random weights of the trained recipe's shape): what a level costs does
not depend on what it learned, and an untrained draft's steps all take the same path.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from roofline import bandwidth
from roofline.cpu_threads import auto_threads
from roofline.knee import ModelStats, chat_prefix, measure_knee
from roofline.timing import Timer
from roofline.tree_costs import level_samples
from scylla_impl import compiled, dtypes
from scylla_impl.decode import PHASES, generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import new_draft
from scylla_impl.methods import BY_NAME, METHODS
from scylla_impl.target import Target
from scylla_impl.training.config import DRAFT_VOCAB
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes

VERIFY_TOKENS = (1, 2, 4, 8, 16, 32, 60)
# (method, decoder layers): every trained method's default drafts (scylla_impl/methods.py)
DRAFTS = tuple((m.name, n) for m in METHODS if m.trained for n in (m.layers or (1,)))
TREE = DecodeConfig()  # the default tree (top_k 10, depth 5, 60 tokens)
BOOKKEEPING = ("tree", "accept", "commit")
PREFIX_TOKENS = 200


@dataclass(frozen=True)
class MethodSpeed:
    draft: str  # "eagle2", "scylla-3", ...
    level_1_s: float  # one draft level, one token wide
    level_topk_s: float  # one draft level, top_k wide (what every level after the first costs)
    step_s: float  # median speculative step, default tree
    phase_s: dict[str, float]  # median seconds per phase of that step
    bookkeeping_share: float  # (tree + accept + commit) / step, over all steps


@dataclass(frozen=True)
class SpeedReport:
    target: str
    dtype: str
    device: str
    threads: int
    compiled: bool  # --compile: steps and draft levels through torch.compile
    weight_bytes: int
    weight_read_s: float
    verify_s: dict[int, float]  # tokens -> median seconds
    ar_step_s: float
    ar_bookkeeping_share: float
    methods: list[MethodSpeed]

    def to_json(self) -> dict:
        return {**asdict(self), "verify_s": {str(n): s for n, s in self.verify_s.items()}}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _split(stats) -> tuple[float, dict[str, float], float]:
    """(median step, median per phase, bookkeeping share of all step time)."""
    step = float(np.median(stats.step_s))
    phases = {p: float(np.median(stats.phase_s[p])) for p in PHASES}
    books = sum(float(stats.phase_s[p].sum()) for p in BOOKKEEPING) / float(stats.step_s.sum())
    return step, phases, books


@torch.inference_mode()  # as decode.generate runs
def measure(target: Target, *, reps: int = 7, steps: int = 32) -> SpeedReport:
    timer = Timer(target.device)
    nbytes = ModelStats.of(target).weight_bytes  # a tied embedding counted once
    _say(f"weight read: a read stream over {nbytes / 1e6:.0f} MB")
    n = bandwidth.elements_for(nbytes, bandwidth.DEFAULT_CONFIG.block)
    read = bandwidth.measure_stream(bandwidth.KERNELS["read"], "torch", n, target.device, timer,
                                    flusher=None, llc_bytes=None, reps=reps)
    if not read.verified:
        raise ScyllaError("the read stream's result failed verification: the weight-read time is not trustworthy")

    _say(f"verify: {len(VERIFY_TOKENS)} chain lengths x {reps} interleaved rounds")
    points, _ = measure_knee(target, [(1, t) for t in VERIFY_TOKENS], prefix_tokens=PREFIX_TOKENS, timer=timer,
                             warmup=1, reps=reps)
    verify = {p.tree_tokens: p.seconds for p in points}

    prefix = chat_prefix(target.tokenizer, PREFIX_TOKENS)
    config = DecodeConfig(max_new_tokens=steps + 1)
    generate(target, [prefix], None, DecodeConfig(max_new_tokens=4))  # warm-up
    ar_step, _, ar_books = _split(generate(target, [prefix], None, config).stats)

    methods = []
    for method, layers in DRAFTS:
        name = BY_NAME[method].draft_name(layers)
        _say(f"draft {name}: one level, then {steps} steps of the default tree")
        draft = new_draft(method, target, layers=layers, draft_vocab=DRAFT_VOCAB)
        cache = target.new_cache(1, len(prefix) + 8)
        out = target.prefill(cache, [prefix], tuple(draft.feature_layers))
        feats = out.layer_inputs if draft.feature_layers else out.hidden
        samples = level_samples(draft, prefix, feats, 1, (1, TREE.top_k), timer, reps)
        level = {w: float(np.median([s for _, width, s in samples if width == w])) for w in (1, TREE.top_k)}
        spec = DecodeConfig(top_k=TREE.top_k, depth=TREE.depth, total_tokens=TREE.total_tokens, max_new_tokens=steps + 1)
        generate(target, [prefix], draft, DecodeConfig(max_new_tokens=4))  # warm-up
        step, phases, books = _split(generate(target, [prefix], draft, spec).stats)
        methods.append(MethodSpeed(name, level[1], level[TREE.top_k], step, phases, books))
    return SpeedReport(target.info.name, str(target.dtype).removeprefix("torch."), str(target.device),
                       torch.get_num_threads(), target.compiled, nbytes, read.timing.median_s, verify, ar_step, ar_books, methods)


def format_report(r: SpeedReport) -> str:
    ms = 1e3
    ar = r.verify_s[1]
    lines = [
        f"{r.target} ({r.dtype}, {r.device}, {r.threads} threads{', compiled' if r.compiled else ''})",
        f"weight read   {r.weight_read_s * ms:7.1f} ms  ({r.weight_bytes / 1e6:.0f} MB at "
        f"{r.weight_bytes / r.weight_read_s / 1e9:.1f} GB/s)",
        f"AR forward    {ar * ms:7.1f} ms  = {ar / r.weight_read_s:.2f}x the weight read",
        f"AR step       {r.ar_step_s * ms:7.1f} ms  = {r.ar_step_s / r.weight_read_s:.2f}x the weight read "
        f"(bookkeeping {100 * r.ar_bookkeeping_share:.1f}%)",
        "verify(n)     " + "  ".join(f"{n}:{s * ms:.1f}" for n, s in r.verify_s.items()) + "  ms",
        "verify(n)/AR  " + "  ".join(f"{n}:{s / ar:.2f}" for n, s in r.verify_s.items()),
        "",
        f"{'draft':<10}{'level 1':>10}{'level k':>10}{'k/AR':>7}{'step':>10}{'verify':>9}{'draft':>9}"
        f"{'tree':>8}{'accept':>8}{'commit':>8}{'books':>7}",
    ]
    for m in r.methods:
        p = m.phase_s
        lines.append(f"{m.draft:<10}{m.level_1_s * ms:>8.2f}ms{m.level_topk_s * ms:>8.2f}ms{m.level_topk_s / ar:>7.1%}"
                     f"{m.step_s * ms:>8.1f}ms{p['verify'] * ms:>9.1f}{p['draft'] * ms:>9.1f}{p['tree'] * ms:>8.1f}"
                     f"{p['accept'] * ms:>8.1f}{p['commit'] * ms:>8.1f}{m.bookkeeping_share:>7.1%}")
    lines.append(f"(level k: top_k {TREE.top_k} wide; step: the default tree {TREE.top_k}/{TREE.depth}/"
                 f"{TREE.total_tokens}, median ms per phase; books: tree + accept + commit, share of all step time)")
    return "\n".join(lines)


def _threads(text: str) -> int:
    if text == "auto":
        return auto_threads()[0]
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a number of threads >= 1, or auto; got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1; got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.speed", description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="default", help="model folder, hub id, or 'default' (the embedded model)")
    ap.add_argument("--dtype", default=dtypes.AUTO, choices=dtypes.CHOICES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=_threads, default="auto", help="torch threads: a number, or auto (every idle CPU)")
    ap.add_argument("--reps", type=_positive, default=7, help="timed repetitions per measurement (medians reported)")
    ap.add_argument("--steps", type=_positive, default=32, help="decode steps per timed generate")
    ap.add_argument("--compile", action="store_true", help=compiled.HELP)
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        target = Target.load(args.target, dtype=args.dtype, device=args.device, compile=args.compile)
        report = measure(target, reps=args.reps,
                         steps=args.steps)
    except ScyllaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json is not None:
        atomic_write_bytes(json.dumps(report.to_json(), indent=2).encode(), args.json)
        _say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
