"""The Triton bandwidth kernels, run on CPU tensors under TRITON_INTERPRET=1 and checked exactly (fp32).

Triton chooses compiler or interpreter when functions are decorated, and `triton.language`
decorates its own helpers (tl.sum) at import. Other test modules import Triton in compiler
mode, so the checks run in a fresh interpreter process with TRITON_INTERPRET=1 set from
the start — the way the interpreter is meant to be used. One process runs every check
and reports each one; the tests below assert them one by one.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from roofline import bandwidth as bw
from roofline import triton_kernels as tk

pytestmark = pytest.mark.skipif(tk.TRITON_ERROR is not None, reason=str(tk.TRITON_ERROR))
REPO = Path(__file__).resolve().parent.parent

CHECKS = textwrap.dedent('''
    import json, traceback
    import torch
    from roofline import bandwidth as bw, triton_kernels as tk
    from roofline.timing import Timer
    from triton.runtime.interpreter import InterpretedFunction

    def interpreted():
        return all(isinstance(k, InterpretedFunction) for k in tk.kernels().values())

    def read_exact(block):
        n = 16 * block
        x = bw._pattern(n, bw.PATTERN_PERIOD, "cpu")
        partials = torch.full((n // block,), float("nan"))
        tk.read(x, partials, tk.LaunchConfig(block))
        return torch.equal(partials, torch.full_like(partials, 28.0 * block / 8))

    def read_tail():
        x = torch.arange(1000, dtype=torch.float32)  # 1000 = 3 full blocks of 256 + a masked tail
        partials = torch.empty(4)
        tk.read(x, partials, tk.LaunchConfig(256))
        expected = torch.tensor([float(x[i:i + 256].sum()) for i in range(0, 1000, 256)])
        return torch.equal(partials, expected)  # integers < 2^24: exact in any order

    def read_rejects_wrong_partials():
        try:
            tk.read(torch.zeros(1024), torch.empty(3), tk.LaunchConfig(256))
        except ValueError:
            return True
        return False

    def copy_exact():
        src = torch.randn(3000)  # arbitrary bits and a tail: a copy must be bit-exact
        dst = torch.full_like(src, -1.0)
        tk.copy(src, dst, tk.LaunchConfig(1024))
        return torch.equal(dst, src)

    def triad_exact():
        g = torch.Generator().manual_seed(0)
        b = torch.randint(-1000, 1000, (5000,), generator=g).float()
        c = torch.randint(-1000, 1000, (5000,), generator=g).float()
        a = torch.full((5000,), float("nan"))
        tk.triad(a, b, c, 3.0, tk.LaunchConfig(512))
        return torch.equal(a, b + 3.0 * c)  # integers < 2^24: exact, fused multiply-add or not

    def registry(name):
        # The path a GPU profile takes: measure_stream with backend "triton", then verification.
        if bw.backend_unavailable("triton", torch.device("cpu")) is not None:
            return False
        s = bw.measure_stream(bw.KERNELS[name], "triton", 8 * 1024, torch.device("cpu"), Timer("cpu"),
                              flusher=None, llc_bytes=None, config=tk.LaunchConfig(1024), warmup=0, reps=1)
        return s.verified

    checks = {
        "interpreted": interpreted,
        "read_exact_256": lambda: read_exact(256),
        "read_exact_1024": lambda: read_exact(1024),
        "read_tail": read_tail,
        "read_rejects_wrong_partials": read_rejects_wrong_partials,
        "copy_exact": copy_exact,
        "triad_exact": triad_exact,
        **{f"registry_{k}": (lambda k=k: registry(k)) for k in bw.KERNELS},
    }
    out = {}
    for name, fn in checks.items():
        try:
            out[name] = bool(fn())
        except Exception:
            out[name] = traceback.format_exc(limit=3)
    print("CHECKS " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHECKS], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CHECKS ")), None)
    assert proc.returncode == 0 and line, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line.removeprefix("CHECKS "))


NAMES = ["interpreted", "read_exact_256", "read_exact_1024", "read_tail", "read_rejects_wrong_partials",
         "copy_exact", "triad_exact"] + [f"registry_{k}" for k in sorted(bw.KERNELS)]


@pytest.mark.parametrize("name", NAMES)
def test_triton_kernel_under_interpreter(interpreter_results, name):
    assert interpreter_results.get(name) is True, interpreter_results.get(name)


def test_without_triton_the_reason_is_reported(monkeypatch):
    monkeypatch.setattr(tk, "triton", None)
    monkeypatch.setattr(tk, "TRITON_ERROR", "triton not importable: ModuleNotFoundError: no triton")
    with pytest.raises(RuntimeError, match="not importable"):
        tk.kernels()
    assert bw.backend_unavailable("triton", torch.device("cuda")).startswith("triton not importable")


def test_kernels_compile_for_hopper_with_vector_loads():
    """Without a GPU: compile each kernel to an sm_90 cubin the way a launch would specialise
    it (16-byte aligned pointers, n a multiple of 16) and check it streams 128-bit accesses."""
    pytest.importorskip("triton.backends.nvidia")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signatures = {
        "read": ({"x_ptr": "*fp32", "partial_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, (0, 1, 2)),
        "copy": ({"src_ptr": "*fp32", "dst_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, (0, 1, 2)),
        "triad": ({"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "scalar": "fp32", "n": "i32",
                   "BLOCK": "constexpr"}, (0, 1, 2, 4)),
    }
    loads = {"read": 1, "copy": 1, "triad": 2}
    stores = {"read": 0, "copy": 1, "triad": 1}
    for name, (sig, aligned) in signatures.items():
        src = ASTSource(fn=tk.kernels()[name], signature=sig, constexprs={(list(sig).index("BLOCK"),): 8192},
                        attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": True})
        except Exception as err:  # no ptxas / LLVM NVPTX in this Triton build
            pytest.skip(f"cannot compile for sm_90 here: {type(err).__name__}: {str(err)[:200]}")
        ptx = compiled.asm["ptx"].splitlines()
        assert compiled.asm.get("cubin")
        v4_loads = sum("ld.global" in line and ".v4" in line for line in ptx)
        v4_stores = sum("st.global" in line and ".v4" in line for line in ptx)
        scalar_loads = sum("ld.global" in line and ".v4" not in line for line in ptx)
        # 8192 fp32 / (8 warps x 32 threads) = 32 per thread = 8 x 128-bit per array
        assert (v4_loads, v4_stores, scalar_loads) == (8 * loads[name], 8 * stores[name], 0), name
