"""The few-row CPU matmul kernel (fp32, and bf16 where the CPU has AVX512-BF16): F.linear's
results, the same bits for a row whatever else is in the batch, installed without touching
parameters, and out of autograd's way."""

import shutil
import subprocess
import sysconfig

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import cpp_extension

from scylla_impl import skinny_linear


@pytest.fixture(scope="module")
def kernel():
    built = skinny_linear.kernel()
    assert built is not None, "the kernel must build where the tests run (gcc and ninja are installed)"
    return built


@pytest.mark.parametrize("rows, k, n", [(1, 576, 1536), (3, 64, 10), (8, 1536, 576), (13, 37, 5), (32, 576, 49152)])
def test_equals_torch_linear(kernel, rows, k, n):
    gen = torch.Generator().manual_seed(rows * k)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((rows, k), (n, k), (n,)))
    torch.testing.assert_close(skinny_linear.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kernel(x, w), x @ w.T, rtol=1e-5, atol=1e-4)


def needs_bf16():
    if torch.bfloat16 not in skinny_linear.dtypes():
        pytest.skip("this CPU has no AVX512-BF16: bf16 goes through torch's matmul")


@pytest.mark.parametrize("rows, k, n", [(1, 576, 1536), (3, 64, 10), (8, 1536, 576), (13, 37, 5), (40, 576, 49152),
                                        (70, 96, 33)])
def test_bf16_equals_fp32_products_rounded(kernel, rows, k, n):
    """bf16 products summed in fp32, rounded once: within an ulp of the fp32 result, as torch's own."""
    needs_bf16()
    gen = torch.Generator().manual_seed(rows * k)
    x, w = (torch.randn(*shape, generator=gen).to(torch.bfloat16) for shape in ((rows, k), (n, k)))
    want = x.float() @ w.float().T
    got = kernel(x, w)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2 ** -7, atol=1e-3)


# 301 weight rows: an odd count leaves a one-row tail when weight rows go two at a time, and
# 301 % 16 rows outside AMX's 16-row blocks; K 100 and 37 are not AMX's blocks of 32 k, K 96 is.
@pytest.mark.parametrize("dtype, k", [(torch.float32, 100), (torch.bfloat16, 96), (torch.bfloat16, 37)])
def test_a_row_gets_the_same_bits_in_any_batch(kernel, dtype, k):
    """AR scores a token alone, a verify scores it inside a tree: their logits must agree exactly."""
    if dtype == torch.bfloat16:
        needs_bf16()
    rows = skinny_linear.max_rows(dtype)
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, k, generator=gen).to(dtype), torch.randn(301, k, generator=gen).to(dtype)
    whole = kernel(x, w)
    for i in range(rows):
        assert torch.equal(kernel(x[i:i + 1].contiguous(), w), whole[i:i + 1]), i
    for m in sorted({*range(1, 41), rows // 2, rows - 1, rows}):  # every block shape, with and without a tail
        assert torch.equal(kernel(x[:m].contiguous(), w), whole[:m]), m
    assert torch.equal(kernel(x[5:17].contiguous(), w), whole[5:17])


def test_install_keeps_parameters_and_tying():
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 50, bias=False))
    model[2].weight = model[0].weight  # a tied head
    keys = list(model.state_dict())
    assert skinny_linear.install(model) == 2
    assert all(type(m) is skinny_linear.SkinnyLinear for m in model[1:])
    assert list(model.state_dict()) == keys and model[2].weight is model[0].weight
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        got = model(ids)
        want = F.linear(F.linear(model[0](ids), model[1].weight, model[1].bias), model[0].weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_and_other_dtypes_use_torch():
    layer = nn.Linear(8, 4)
    skinny_linear.install(layer)
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()  # through F.linear: the kernel has no backward
    assert x.grad is not None and layer.weight.grad is not None
    half = nn.Linear(8, 4).to(torch.float16)
    assert skinny_linear.install(half) == 0 and type(half) is nn.Linear
    bf16 = nn.Linear(8, 4).to(torch.bfloat16)
    assert skinny_linear.install(bf16) == (torch.bfloat16 in skinny_linear.dtypes())
    wide = torch.randn(skinny_linear.MAX_ROWS + 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(wide), F.linear(wide, layer.weight, layer.bias))


def test_the_embedded_target_runs_on_it(target_fp32):
    assert target_fp32.matmul == "skinny"
    assert isinstance(target_fp32.lm_head, skinny_linear.SkinnyLinear)


# x86-64-v2 compiles the same branches as v3 (none is AVX2-specific); it stays in the slow suite as a
# plain-x86-64 check, for the fast suite's time.
ARCHES = [pytest.param("x86-64-v2", marks=pytest.mark.slow), "x86-64-v3", "x86-64-v4", "sapphirerapids",
          "sapphirerapids -mno-amx-tile -mno-amx-bf16 -mno-amx-int8"]


@pytest.fixture(scope="module")
def syntax_checks(request, tmp_path_factory):
    """arch -> its g++ -fsyntax-only run over the kernels' source, all started at once (each
    takes about 6 s of one core on a 2-core AVX2 EPYC; the cases then wait for their own)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ on this machine")
    source = tmp_path_factory.mktemp("kernels") / "kernels.cpp"
    source.write_text("\n".join(skinny_linear.SOURCES))
    includes = [f"-I{path}" for path in (*cpp_extension.include_paths(), sysconfig.get_paths()["include"])]
    wanted = {item.callspec.params["arch"] for item in request.session.items
              if item.originalname == "test_kernel_source_compiles_for_other_cpus"}
    checks = {}
    for arch in wanted:
        march, *others = arch.split()
        checks[arch] = subprocess.Popen([compiler, "-std=c++17", "-fsyntax-only", f"-march={march}", *others,
                                         *skinny_linear.PORTABLE_CFLAGS, *includes, str(source)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield checks
    for check in checks.values():
        if check.poll() is None:
            check.kill()
            check.wait()


@pytest.mark.parametrize("arch", ARCHES)
def test_kernel_source_compiles_for_other_cpus(arch, syntax_checks):
    """The kernels are built with -march=native, so this machine's build says nothing of a
    plain x86-64, AVX2 or AVX512-BF16-without-AMX CPU's: there a missing definition would fail
    the whole extension, and decode steps would lose both kernels (fp32 matmuls and exact
    attention). Each instruction set's branches compile here (syntax and types, no code; the
    builds run on this CPU in tests/test_kernel_isa.py)."""
    _, stderr = syntax_checks[arch].communicate()
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert syntax_checks[arch].returncode == 0 and not errors, "\n".join(errors[:10]) or stderr[-2000:]
