"""The few-row fp32 CPU matmul kernel: F.linear's results, the same bits for a row whatever
else is in the batch, installed without touching parameters, and out of autograd's way."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


def test_a_row_gets_the_same_bits_in_any_batch(kernel):
    """AR scores a token alone, a verify scores it inside a tree: their logits must agree exactly."""
    gen = torch.Generator().manual_seed(0)
    # 301 weight rows: an odd count leaves a one-row tail when weight rows go two at a time
    x, w = torch.randn(40, 100, generator=gen), torch.randn(301, 100, generator=gen)
    whole = kernel(x, w)
    for i in range(40):
        assert torch.equal(kernel(x[i:i + 1].contiguous(), w), whole[i:i + 1])
    for m in range(1, skinny_linear.MAX_ROWS + 1):  # every register block shape, with and without a tail block
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
    bf16 = nn.Linear(8, 4).to(torch.bfloat16)
    assert skinny_linear.install(bf16) == 0 and type(bf16) is nn.Linear
    wide = torch.randn(skinny_linear.MAX_ROWS + 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(wide), F.linear(wide, layer.weight, layer.bias))


def test_the_embedded_target_runs_on_it(target_fp32):
    assert target_fp32.matmul == "skinny"
    assert isinstance(target_fp32.lm_head, skinny_linear.SkinnyLinear)
