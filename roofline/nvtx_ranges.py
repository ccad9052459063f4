"""NVTX ranges around phases, so Nsight Systems timelines show "prefill", "draft", "verify"...

    from roofline.nvtx_ranges import phase
    with phase("verify"):
        target.forward_tree(...)

On a machine without CUDA (or without the `nvtx` package) `phase` is a no-op context
manager costing one dict lookup, so callers never need to check. SCYLLA_NVTX=1 forces
ranges on (e.g. to see CPU phases in a profiler), SCYLLA_NVTX=0 forces them off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import cache

DOMAIN = "scylla"


@cache
def _annotate():
    """nvtx.annotate when ranges are enabled, else None. Decided once per process."""
    forced = os.environ.get("SCYLLA_NVTX")
    if forced == "0":
        return None
    if forced != "1":
        try:
            import torch

            if not torch.cuda.is_available():
                return None
        except ImportError:
            return None
    try:
        import nvtx
    except ImportError:
        return None
    return nvtx.annotate


def enabled() -> bool:
    return _annotate() is not None


@contextlib.contextmanager
def phase(name: str, color: str | None = None) -> Iterator[None]:
    annotate = _annotate()
    if annotate is None:
        yield
        return
    with annotate(message=name, color=color, domain=DOMAIN):
        yield
