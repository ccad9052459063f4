"""RMSNorm as one operator (scylla_impl/row_norm.py): eager's bits at every width where ATen
sums in the order it follows, eager elsewhere; the fused operators only in decode steps (training
keeps autograd's eager ones); a target's norms swapped in only where they give its own bits
(scylla_impl/target_norms.py)."""

import pytest
import torch

from scylla_impl import skinny_linear, target_norms
from scylla_impl.drafts.layers import DraftLayer, RMSNorm, _fused_norm_is_eager, _rms_norm, rotary

pytestmark = pytest.mark.usefixtures("cpu_kernels")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [8, 33, 576, 960, 2048, 4096, 8192 + 8, 70_000])
def test_rms_norm_gives_eager_bits(dtype, width):
    # Widths of 64 and more vectors of 8 run multi_row_sum's cascade of 16-row levels; 70,000
    # crosses two levels and leaves vectors and floats over.
    gen = torch.Generator().manual_seed(width)
    x = (torch.randn(5, 3, width, generator=gen) * 4).to(dtype)
    weight = torch.randn(width, generator=gen).to(dtype)
    got = torch.ops.scylla.rms_norm(x, weight, 1e-5)
    assert got.shape == x.shape and got.dtype == dtype
    assert torch.equal(got, _rms_norm(x, weight, 1e-5))


def test_a_width_where_aten_sums_otherwise_stays_eager():
    # Under 8 floats ATen's sum takes a scalar path the kernel does not follow.
    assert not _fused_norm_is_eager(7) and _fused_norm_is_eager(576)
    norm = RMSNorm(7)
    x = torch.randn(3, 7) * 3
    with torch.inference_mode():
        ran = _ops_run(lambda: norm(x))
        assert torch.equal(norm(x), _rms_norm(x, norm.weight, norm.eps))
    assert "scylla::rms_norm" not in ran


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_a_decode_step_takes_the_kernels_and_training_keeps_autograd(monkeypatch):
    torch.manual_seed(0)
    dtype = skinny_linear.built_dtypes()[-1]  # bf16 where the CPU has it
    layer = DraftLayer(64, 128, heads=4, kv_heads=2, head_dim=16, eps=1e-6).to(dtype)
    x = torch.randn(1, 5, 64, dtype=dtype)
    cos, sin = rotary(torch.arange(5)[None], 16, 10000.0, dtype)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()

    with torch.inference_mode():
        ran = _ops_run(lambda: layer(x, cos, sin, mask, None, 0))
        fused = layer(x, cos, sin, mask, None, 0)
        monkeypatch.setattr(skinny_linear, "kernel_takes", lambda *tensors: False)
        eager = layer(x, cos, sin, mask, None, 0)
    assert {"scylla::rms_norm", "scylla::rotary"} <= ran
    assert torch.equal(fused, eager)

    monkeypatch.undo()
    ran = _ops_run(lambda: layer(x, cos, sin, mask, None, 0).float().sum().backward())
    assert not {"scylla::rms_norm", "scylla::rotary"} & ran
    assert layer.post_attention_layernorm.weight.grad is not None


def test_the_targets_norms_take_the_operator_in_decode_steps_with_their_own_bits(default_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from scylla_impl.target import Target

    dtype = skinny_linear.built_dtypes()[-1]
    target = Target.load("default", dtype=dtype)
    stock = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=dtype)  # transformers' own norms
    assert target.fused_norms == 2 * stock.config.num_hidden_layers + 1
    final, own = target.decoder.norm, stock.model.norm
    x = torch.randn(2, 7, stock.config.hidden_size, dtype=dtype) * 5  # a verify's rows
    with torch.inference_mode():
        ran = _ops_run(lambda: final(x))
        assert torch.equal(final(x), own(x))
        many = torch.randn(target_norms.MAX_ROWS + 1, stock.config.hidden_size, dtype=dtype)
        assert "scylla::rms_norm" not in _ops_run(lambda: final(many))  # a prefill's rows: the module's own
        assert torch.equal(final(many), own(many))
    assert "scylla::rms_norm" in ran
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        fused = target.model(ids).logits
        monkeypatch.setattr(skinny_linear, "kernel_takes", lambda *tensors: False)
        assert torch.equal(fused, target.model(ids).logits)


def test_a_norm_whose_bits_differ_keeps_its_own_forward():
    """Gemma's norm scales by 1 + weight: it is left as it is, as is a LayerNorm."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    skinny_linear.install(torch.nn.Linear(8, 8))  # builds the extension where it can
    model = Gemma2ForCausalLM(Gemma2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=128, vocab_size=256,
                                           head_dim=16))
    assert target_norms.install(model) == 0
    layer_norm = torch.nn.Sequential(torch.nn.LayerNorm(64))
    assert target_norms.install(layer_norm) == 0
