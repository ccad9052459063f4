"""The target's attention: exact decode steps on the CPU, SDPA without KV copies elsewhere.

A decode step on the CPU (at most row_attention.MAX_QUERIES tokens per row, fp32 or bf16,
plain attention) goes to row_attention.py, whose result for a token does not depend on the
tree around it, so an AR step and a verify score it alike.

transformers' SDPA attention repeats the key/value heads of a grouped-query model
(`repeat_kv`) whenever a mask is given and more than one query token comes in: every
verify of a tree copies the whole cache of every layer (SmolLM2: 3 KV heads to 9). SDPA
broadcasts the groups itself with `enable_gqa`, so this implementation passes the tree
mask there; everything else (no mask, one query token, soft-capping, position bias) goes
to transformers' own SDPA unchanged.
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from scylla_impl import row_attention, skinny_linear

NAME = "scylla_sdpa"


def gqa_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs) -> tuple[torch.Tensor, None]:
    """query [b, heads, q, d], key/value [b, kv_heads, kv, d], mask [b, 1, q, kv] -> [b, q, heads, d]."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None
    if plain and _row_attention_applies(query, key, value, attention_mask, dropout):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return torch.ops.scylla.row_attention(query, key, value, attention_mask, float(scale)), None
    if not (grouped and plain and attention_mask is not None and query.shape[2] > 1
            and key.shape[-1] == value.shape[-1]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)  # [b, heads, q, d]
    return out.transpose(1, 2).contiguous(), None


def draft_mask(mask: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The mask every layer of one draft forward reads, made once per forward: bool mask
    [b or 1, 1, q, kv] (True = attend) -> the same mask, or, where a tree level goes to
    row_attention.py (on the CPU, no grad, a level's few tokens), additive [b, 1, q, kv] in
    `dtype`, as that kernel takes it. Training's held-out passes broadcast one mask over the
    batch; the kernel wants one per row."""
    _, _, q, kv = mask.shape
    if torch.is_grad_enabled() or not _row_attention_takes(mask.device, q, dtype):
        return mask
    visible = mask.expand(batch, 1, q, kv)
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))


def draft_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A draft layer's attention: query [b, heads, q, d], key/value [b, kv_heads, kv, d], mask
    from draft_mask -> [b, q, heads * d]. A tree level on the CPU goes to row_attention.py as
    the target's steps do: SDPA's CPU kernel spent 130-200 us a layer on a 10-token level of
    the embedded default's drafts, about a tenth of the level. Training, prefill-length inputs
    and other devices go to SDPA, which reads each KV head for its query group in place
    (repeating the heads would copy the draft's whole cache on every forward)."""
    b, _, q, _ = query.shape
    if _row_attention_applies(query, key, value, mask, 0.0):
        return torch.ops.scylla.row_attention(query, key, value, mask, query.shape[-1] ** -0.5).reshape(b, q, -1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                         enable_gqa=key.shape[1] != query.shape[1])  # [b, heads, q, d]
    return out.transpose(1, 2).reshape(b, q, -1)


def _row_attention_applies(query, key, value, mask, dropout: float) -> bool:
    """A decode step on the CPU with the built kernel: row_attention.py, whose result for a
    token does not depend on the tree around it, so AR and a verify score it alike."""
    return (_row_attention_takes(query.device, query.shape[2], query.dtype) and dropout == 0.0
            and mask is not None and mask.dtype == query.dtype == key.dtype == value.dtype
            and mask.shape == (query.shape[0], 1, query.shape[2], key.shape[2])
            and key.shape[-1] == value.shape[-1] == query.shape[-1]
            and key.stride(-1) == 1 and value.stride(-1) == 1
            and not (torch.is_grad_enabled() and query.requires_grad))


def _row_attention_takes(device: torch.device, queries: int, dtype: torch.dtype) -> bool:
    """What the kernel needs of a forward before its tensors are looked at: the CPU, a decode
    step's few queries, a dtype it was built for."""
    return device.type == "cpu" and queries <= row_attention.MAX_QUERIES and dtype in skinny_linear.built_dtypes()


AttentionInterface.register(NAME, gqa_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # it takes the masks SDPA takes
