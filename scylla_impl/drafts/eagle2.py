"""EAGLE-2 draft: fc(cat(embed(t+1), h_t)) 2h->h, one decoder layer without input norm,
the target's frozen LM head (Li et al., 2024), over the full or a reduced vocabulary."""

import torch
from torch import nn

from scylla_impl.drafts.base import Draft, DraftConfig
from scylla_impl.drafts.layers import DraftLayer


def decoder_stack(c: DraftConfig, first_input_norm: bool, first_attn_in: int | None = None) -> nn.ModuleList:
    return nn.ModuleList(
        DraftLayer(c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim,
                   c.rms_norm_eps, input_norm=first_input_norm or i > 0,
                   attn_in=first_attn_in if i == 0 else None)
        for i in range(c.num_layers)
    )


class Eagle2Draft(Draft):
    def __init__(self, config: DraftConfig, target):
        super().__init__(config, target)
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.layers = decoder_stack(config, first_input_norm=False)

    def _inputs(self, tokens, features, from_target):
        emb = self.embed(tokens).to(features.dtype)
        return self.fc(torch.cat([emb, features], dim=-1)), None

    def _head(self, out):
        return self._target_head(out)
