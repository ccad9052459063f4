"""The compiled fast path (`--compile`): one-token and tree steps through `torch.compile`.

What is compiled: the target's forward over a step's tokens (an AR token, a tree to verify)
and a draft's forward over one tree level or one accepted path, each over a static KV cache
(kv_cache.py), so their shapes depend only on the batch and the tokens scored. Prefills stay
eager: every prompt length would be a new shape. Inductor fuses the norms, rotary embeddings and
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
import types
from collections.abc import Callable

HELP = ("compile the target's step and the draft's tree levels and accepted paths with torch.compile over a "
        "static KV cache (about a minute per new shape, once per process)")

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
    """The bound method `fn` of one model, compiled; each call names `what` and its first
    tensor's leading sizes for the compile messages.

    Dynamo checks guards on every call, and those on the model's modules and parameters
    (about 270 tensors for the embedded default) took 2.0 ms of a 12 ms compiled step on a
    2-core CPU. Those guards are skipped: the method gets a code object of its own, and dynamo
    keeps compiled code per code object, so no other model's call can reach this model's
    graphs, and no caller changes a model's modules once it decodes. That holds only when the
    whole step is one graph (a graph break compiles the model's inner functions, whose code
    every model of the class shares), so the step is compiled with fullgraph=True, and a
    model whose step breaks the graph is compiled again with every guard kept."""
    import torch
    import torch._dynamo

    global _announcer
    if _announcer is None:
        _announcer = _Announcer()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           4 * RECOMPILE_LIMIT)
    own = _with_own_code(fn)
    compiled = torch.compile(own, dynamic=True, fullgraph=True,
                             options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    def run(tokens, *args, **kwargs):
        nonlocal compiled
        _announcer.label = f"{what} (batch {tokens.shape[0]}, {tokens.shape[1]} tokens)"
        try:
            return compiled(tokens, *args, **kwargs)
        except torch._dynamo.exc.Unsupported as err:
            print(f"{what} does not compile to one graph ({str(err).splitlines()[0]}); compiling it with "
                  "all of dynamo's guards", file=sys.stderr, flush=True)
            compiled = torch.compile(own, dynamic=True)
            return compiled(tokens, *args, **kwargs)

    return run


def _with_own_code(method: Callable) -> Callable:
    """`method` bound to a fresh copy of its function, whose code object no other function has."""
    func = method.__func__
    copy = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                              func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    return types.MethodType(copy, method.__self__)


__all__ = ["HELP", "RECOMPILE_LIMIT", "compile_step"]
