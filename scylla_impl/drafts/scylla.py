"""Scylla draft (arXiv 2505.07858): the EAGLE-2 input path with RMSNorm on the token
embedding and on the output before the target's LM head, and 1..10 decoder layers.

Its input path has an ablation (`draft_input="concat"`): no projection; the first layer's
attention reads cat(norm(embedding), norm(feature)) itself, as EAGLE-3's does, and the residual
stream starts at the feature. It has about as many parameters (the projection's 2h*h go, the
first layer's q/k/v read 2h instead of h), so the two compare the input path at equal size."""

import torch
from torch import nn

from scylla_impl.drafts.base import Draft, DraftConfig
from scylla_impl.drafts.eagle2 import decoder_stack
from scylla_impl.drafts.layers import RMSNorm
from scylla_impl.methods import CONCAT, PROJECTION
from workloads.errors import ScyllaError

MAX_LAYERS = 10


class ScyllaDraft(Draft):
    norm_before_target_head = True
    max_layers = MAX_LAYERS
    inputs = (PROJECTION, CONCAT)

    def __init__(self, config: DraftConfig, target):
        if not 1 <= config.num_layers <= MAX_LAYERS:
            raise ScyllaError(f"Scylla drafts have 1..{MAX_LAYERS} layers, not {config.num_layers}")
        super().__init__(config, target)
        h = config.hidden_size
        self.embed_norm = RMSNorm(h, config.rms_norm_eps)
        if self.config.draft_input == CONCAT:
            self.hidden_norm = RMSNorm(h, config.rms_norm_eps)
            self.layers = decoder_stack(config, first_input_norm=True, first_attn_in=2 * h)
        else:
            self.fc = nn.Linear(2 * h, h, bias=True)
            self.layers = decoder_stack(config, first_input_norm=False)
        self.norm = RMSNorm(h, config.rms_norm_eps)

    def _inputs(self, tokens, features, from_target):
        emb = self.embed_norm(self.embed(tokens).to(features.dtype))  # [b, q, h]
        if self.config.draft_input == CONCAT:
            return features, torch.cat([emb, self.hidden_norm(features)], dim=-1)  # [b, q, h], [b, q, 2h]
        return self.fc(torch.cat([emb, features], dim=-1)), None  # [b, q, h]

    def _head(self, out):
        return self._target_head(self.norm(out))
