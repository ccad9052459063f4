"""The decoder layer every draft is built from: RMSNorm, rotary GQA attention, SwiGLU MLP.

Attention reads and writes a RowKVCache (the same class the target uses) when decoding,
or runs over whole sequences with a given mask when training. A decode step on the CPU runs
each norm and each rotation as one operator (row_norm.py, row_rotary.py) with eager's bits,
instead of eight and seven eager ones.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from scylla_impl import row_norm, skinny_linear
from scylla_impl.gqa_attention import draft_attention
from scylla_impl.kv_cache import RowKVCache


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


@functools.cache
def _fused_norm_is_eager(width: int) -> bool:
    """Whether row_norm.py's operator gives `_rms_norm`'s bits at this width: it follows ATen's
    summation order, which another torch build could change. Checked once per width."""
    weight = torch.rand(width, generator=torch.Generator().manual_seed(width))
    weights = [weight.to(dtype) for dtype in (torch.float32, torch.bfloat16)]
    return all(row_norm.repeats(functools.partial(_rms_norm, weight=w, eps=1e-6), w, 1e-6) for w in weights)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if skinny_linear.kernel_takes(x, self.weight) and _fused_norm_is_eager(x.shape[-1]):
            return torch.ops.scylla.rms_norm(x, self.weight, self.eps)
        return _rms_norm(x, self.weight, self.eps)


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None, device=None) -> torch.Tensor:
    """[head_dim / 2] rotary frequencies; `scaling` None, or Llama-3.1's {"rope_type": "llama3", ...}:
    wavelengths past the original context are stretched by `factor`, short ones kept, and the
    band between blended (as transformers' `_compute_llama3_parameters`)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    if scaling is None:
        return inv
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    stretched = torch.where(wavelen > context / low, inv / factor, inv)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * stretched / factor + smooth * stretched
    between = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(between, blended, stretched)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, scaling: dict | None = None):
    """cos, sin [b, 1, q, head_dim] for absolute positions [b, q]."""
    inv = inverse_frequencies(head_dim, theta, scaling, positions.device)
    freqs = positions.float()[..., None] * inv
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class DraftAttention(nn.Module):
    def __init__(self, in_dim: int, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(in_dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(in_dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(in_dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, cos, sin, mask, cache: RowKVCache | None, layer: int):
        b, q, _ = x.shape
        qs = self.q_proj(x).view(b, q, self.heads, self.head_dim).transpose(1, 2)
        ks = self.k_proj(x).view(b, q, self.kv_heads, self.head_dim).transpose(1, 2)
        vs = self.v_proj(x).view(b, q, self.kv_heads, self.head_dim).transpose(1, 2)
        if skinny_linear.kernel_takes(qs, cos, sin):
            qs, ks = torch.ops.scylla.rotary(qs, cos, sin), torch.ops.scylla.rotary(ks, cos, sin)
        else:
            qs = qs * cos + _rotate_half(qs) * sin
            ks = ks * cos + _rotate_half(ks) * sin
        if cache is not None:
            ks, vs = cache.update(layer, ks, vs)
        return self.o_proj(draft_attention(qs, ks, vs, mask))


class DraftMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftLayer(nn.Module):
    """Pre-norm decoder layer. `input_norm=False` is EAGLE-1/2's first layer; `attn_in`
    wider than `hidden` is EAGLE-3's layer that attends over cat(embedding, feature), given to
    it already normed, so it has no input norm of its own (a parameter no loss reaches would
    stop DDP)."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                 eps: float, input_norm: bool = True, attn_in: int | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps) if input_norm and attn_in is None else None
        self.self_attn = DraftAttention(attn_in or hidden, hidden, heads, kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = DraftMLP(hidden, intermediate)

    def forward(self, hidden, cos, sin, mask, cache, layer, attn_input=None):
        if attn_input is None:
            attn_input = self.input_layernorm(hidden) if self.input_layernorm is not None else hidden
        hidden = hidden + self.self_attn(attn_input, cos, sin, mask, cache, layer)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))
