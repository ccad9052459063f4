"""The compiled fast path (`--compile`): one-token and tree steps through `torch.compile`.

What is compiled: the target's forward over a step's tokens (an AR token, a tree to verify)
and a draft's forward over one tree level, each over a static KV cache (kv_cache.py), so
their shapes depend only on the batch and the tokens scored. Prefills stay eager: every
prompt length would be a new shape. Inductor fuses the norms, rotary embeddings and
residual adds that eager mode runs one small operator at a time, and the Python of a
30-layer forward runs once, at trace time; the few-row matmuls stay the skinny kernel's
(skinny_linear.py registers it as an operator the graph calls).

Sizes are symbolic from the start (`dynamic=True`), so one graph serves every batch size,
tree width and cache capacity; torch still gives size 1 graphs of their own, so a step
compiles up to four times (batch 1 or more, one token or several), each about a minute on
a 2-core CPU. Compiling therefore pays on long runs (a sweep compiles in its warm-up), not
on one short generate. Each compile says so on stderr while it runs.

torch is imported when a step is compiled: the CLI's option registry reads HELP from here,
and the CLI starts without loading torch.
"""

import sys
import time
from collections.abc import Callable

HELP = ("compile the target's step and the draft's tree level with torch.compile over a static KV cache "
        "(about a minute per new shape, once per process)")

# A sweep compiles each step's few graphs once per target and draft, but a model whose code
# reads a Python number from the cache would compile every step; past this many dynamo runs
# the function eagerly instead of compiling on.
RECOMPILE_LIMIT = 64


class _Announcer:
    """Says on stderr what is compiling and how long it took: dynamo's callbacks are global,
    so the step that triggered the compile names itself in `label` before each call."""

    def __init__(self):
        import torch._dynamo

        self.label = "a step"
        self.started: float | None = None
        torch._dynamo.callback_handler.register_start_callback(self._start)
        torch._dynamo.callback_handler.register_end_callback(self._end)

    def _start(self, _args) -> None:
        self.started = time.perf_counter()
        print(f"compiling {self.label} (--compile; about a minute per new shape)", file=sys.stderr, flush=True)

    def _end(self, _args) -> None:
        if self.started is not None:
            print(f"compiled {self.label} in {time.perf_counter() - self.started:.0f} s", file=sys.stderr, flush=True)
            self.started = None


_announcer: _Announcer | None = None


def compile_step(fn: Callable, what: str) -> Callable:
    """`fn` compiled; each call names `what` and its first tensor's leading sizes for the
    compile messages."""
    import torch
    import torch._dynamo

    global _announcer
    if _announcer is None:
        _announcer = _Announcer()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           4 * RECOMPILE_LIMIT)
    compiled = torch.compile(fn, dynamic=True)

    def run(tokens, *args, **kwargs):
        _announcer.label = f"{what} (batch {tokens.shape[0]}, {tokens.shape[1]} tokens)"
        return compiled(tokens, *args, **kwargs)

    return run


__all__ = ["HELP", "RECOMPILE_LIMIT", "compile_step"]
