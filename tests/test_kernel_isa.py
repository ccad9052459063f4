"""The decode-step kernels built for instruction sets below this machine's, and run on it: AVX2
(no AVX-512), AVX-512 without BF16 (Skylake-X, Ice Lake) and AVX512-BF16 without AMX (Zen 4).
The project's own build is -march=native, so on an AMX Xeon those branches never run; here
each builds (about 30 s) and must give torch's results with a row's bits independent of its
batch (matmul) and of the queries and keys around it (attention).

Each build runs in its own process: the extension registers the `scylla` operators, which one
process can register once (`python tests/test_kernel_isa.py ISA FOLDER` runs one check)."""

import subprocess
import sys
from pathlib import Path

import pytest

from scylla_impl import skinny_linear

# The build flags per instruction set, and the /proc/cpuinfo flag this CPU needs to run it.
ISAS = {
    "avx2": (["-march=x86-64-v3"], "avx2"),
    "avx512-no-bf16": (["-march=x86-64-v4"], "avx512f"),
    "avx512bf16-no-amx": (["-march=sapphirerapids", "-mno-amx-tile", "-mno-amx-bf16", "-mno-amx-int8"], "avx512_bf16"),
}


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
def test_kernels_built_for_another_instruction_set_are_right(isa, tmp_path):
    if ISAS[isa][1] not in skinny_linear._read_cpu_flags().split():
        pytest.skip(f"this CPU cannot run {isa} code")
    done = subprocess.run([sys.executable, __file__, isa, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "attention ok" in done.stdout


def check(isa: str, folder: str) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    built = skinny_linear.build(f"scylla_{isa.replace('-', '_')}", Path(folder),
                                [*skinny_linear.PORTABLE_CFLAGS, *ISAS[isa][0]])
    assert not built.amx_supported()
    assert built.bf16_supported() == (isa == "avx512bf16-no-amx")
    gen = torch.Generator().manual_seed(0)
    dtypes = (torch.float32, torch.bfloat16) if built.bf16_supported() else (torch.float32,)
    for dtype in dtypes:
        tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
        for rows, k, n in [(1, 576, 1536), (3, 64, 10), (8, 1536, 576), (13, 37, 5), (32, 576, 4099)]:
            x, w = (torch.randn(*shape, generator=gen).to(dtype) for shape in ((rows, k), (n, k)))
            y = built.skinny_linear(x, w)  # [rows, n]
            torch.testing.assert_close(y.float(), x.float() @ w.float().T, **tolerance)
            for r in (0, rows - 1):
                assert torch.equal(built.skinny_linear(x[r:r + 1], w)[0], y[r]), (dtype, rows, r)
    print("matmul ok")
    for dtype in (torch.float32, torch.bfloat16):
        tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        for batch, heads, kv_heads, dim, queries, keys in [(1, 9, 3, 64, 1, 200), (2, 4, 4, 8, 7, 33),
                                                             (2, 8, 2, 80, 60, 300), (2, 2, 1, 128, 5, 17)]:
            q = torch.randn(batch, heads, queries, dim, generator=gen).to(dtype)
            k, v = (torch.randn(batch, kv_heads, keys, dim, generator=gen).to(dtype) for _ in range(2))
            visible = torch.rand(batch, 1, queries, keys, generator=gen) < 0.7
            visible[..., 0] = True
            mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
            out = torch.ops.scylla.row_attention(q, k, v, mask, dim ** -0.5)  # [b, q, h, d]
            want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float(),
                                                  enable_gqa=True)
            torch.testing.assert_close(out.float(), want.transpose(1, 2), **tolerance)
            alone = torch.ops.scylla.row_attention(q[:, :, -1:], k, v, mask[:, :, -1:], dim ** -0.5)
            assert torch.equal(alone[:, 0], out[:, -1]), (dtype, queries, keys)
    print("attention ok")


if __name__ == "__main__":
    check(sys.argv[1], sys.argv[2])
