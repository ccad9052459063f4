"""What --compile buys on this machine: eager against compiled, measured side by side.

    python -m reports.compile_gain --dtype float32          # the embedded default, 2 threads here

One process loads the target twice, eager and compiled (scylla_impl/compiled.py), and times
them in alternation, round after round, so a slow spell of the machine lands on both:
- the target's forward over 1, 8 and 60 tokens on a 200-token chat prefix (an AR step's
  forward, a small tree's verify, the default tree's verify);
- whole decode steps: AR, and each given draft on the default tree (untrained drafts of the
  default recipe's shape: a step's cost does not depend on what the draft learned).
Compile time is the first call of each shape, reported beside the gain per step, so the
number of steps after which compiling pays is plain.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from roofline.knee import chain_inputs, chat_prefix
from scylla_impl import dtypes
from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import new_draft
from scylla_impl.methods import BY_NAME
from scylla_impl.target import Target
from scylla_impl.training.config import DRAFT_VOCAB
from workloads.errors import ScyllaError

FORWARD_TOKENS = (1, 8, 60)
PREFIX_TOKENS = 200
MODES = ("eager", "compiled")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _forward_call(target: Target, prefix: list[int], n: int):
    """A call that times one forward over an n-token chain after `prefix`, then rolls it back."""
    cache = target.new_cache(1, len(prefix) + n + 8)
    target.prefill(cache, [prefix])
    tokens, depths, mask = chain_inputs(1, n, target.info.vocab_size, target.device)  # [1, n], [1, n], [1, n, n]

    def call() -> float:
        start = time.perf_counter()
        target.forward_tree(cache, tokens, depths, mask)
        seconds = time.perf_counter() - start
        target.rollback(cache)
        return seconds
    return call


def _median_step(target: Target, prefix: list[int], draft, steps: int) -> float:
    """Median step of a generate (AR without a draft, the default tree with one)."""
    return float(np.median(generate(target, [prefix], draft, DecodeConfig(max_new_tokens=steps + 1)).stats.step_s))


def _draft_spec(text: str) -> tuple[str, int | None]:
    """'eagle2' -> ('eagle2', None); 'scylla-3' -> ('scylla', 3)."""
    method, _, layers = text.partition("-")
    if layers and not layers.isdigit():
        raise ScyllaError(f"--drafts: {text!r} is not METHOD or METHOD-LAYERS (scylla-3)")
    return method, int(layers) if layers else None


@torch.no_grad()
def measure(name: str, dtype: str, drafts: list[tuple[str, int | None]], rounds: int, steps: int) -> list[tuple[str, dict, float]]:
    """[(what, {mode: median seconds}, compile seconds)]. Every case is a call that returns its seconds."""
    targets = {mode: Target.load(name, dtype=dtype, compile=mode == "compiled") for mode in MODES}
    prefix = chat_prefix(targets["eager"].tokenizer, PREFIX_TOKENS)
    cases: dict[str, dict[str, object]] = {}
    for n in FORWARD_TOKENS:
        cases[f"forward {n} tokens"] = {mode: _forward_call(t, prefix, n) for mode, t in targets.items()}
    cases["AR step"] = {mode: (lambda t=t: _median_step(t, prefix, None, steps)) for mode, t in targets.items()}
    for method, layers in drafts:
        made = {mode: new_draft(method, t, layers=layers, draft_vocab=DRAFT_VOCAB) for mode, t in targets.items()}
        label = BY_NAME[method].draft_name(layers)
        cases[f"{label} step (10/5/60)"] = {mode: (lambda t=targets[mode], d=made[mode]: _median_step(t, prefix, d, steps))
                                            for mode in MODES}
    compile_s = {}
    for what, calls in cases.items():  # the first call of each shape compiles
        _say(f"warm-up: {what}")
        start = time.perf_counter()  # wall time: a step's median would hide the step that compiled
        calls["compiled"]()
        compile_s[what] = time.perf_counter() - start
        calls["eager"]()
    samples: dict[str, dict[str, list[float]]] = {w: {m: [] for m in MODES} for w in cases}
    for r in range(rounds):
        _say(f"round {r + 1}/{rounds}")
        for what, calls in cases.items():
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                samples[what][mode].append(calls[mode]())
    return [(w, {m: float(np.median(s[m])) for m in MODES}, compile_s[w]) for w, s in samples.items()]


def format_table(rows: list[tuple[str, dict, float]]) -> str:
    lines = [f"{'':<28}{'eager':>10}{'compiled':>10}{'ratio':>8}{'first call':>12}{'pays after':>14}"]
    for what, med, first in rows:
        saved = med["eager"] - med["compiled"]
        pays = f"{first / saved:,.0f} calls" if saved > 0 else "never"
        lines.append(f"{what:<28}{med['eager'] * 1e3:>8.1f}ms{med['compiled'] * 1e3:>8.1f}ms"
                     f"{med['compiled'] / med['eager']:>8.2f}{first:>11.0f}s{pays:>14}")
    lines.append("(medians over alternating rounds; ratio = compiled / eager; first call: the compiled path's "
                 "first call of that shape, compile included)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.compile_gain", description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="default", help="model folder, hub id, or 'default' (the embedded model)")
    ap.add_argument("--dtype", default="float32", choices=dtypes.CHOICES)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--drafts", default="eagle2,scylla-3", help="draft methods, comma-separated (scylla-N: N layers)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=16, help="decode steps per timed generate")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        drafts = [_draft_spec(d) for d in args.drafts.split(",") if d]
        rows = measure(args.target, args.dtype, drafts, max(1, args.rounds), max(1, args.steps))
    except ScyllaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
