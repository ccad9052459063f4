"""SDPA for the target that never copies its KV cache to match the query heads.

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

NAME = "scylla_sdpa"


def gqa_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs) -> tuple[torch.Tensor, None]:
    """query [b, heads, q, d], key/value [b, kv_heads, kv, d], mask [b, 1, q, kv] -> [b, q, heads, d]."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None
    if not (grouped and plain and attention_mask is not None and query.shape[2] > 1
            and key.shape[-1] == value.shape[-1]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)  # [b, heads, q, d]
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, gqa_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # it takes the masks SDPA takes
