"""EAGLE-3 draft (Li et al., 2025): features fused from three target layers (3h->h); its
first layer attends over cat(norm(embed), norm(feature)); its own norm and LM head over a
reduced draft vocabulary, mapped to target ids by d2t (t2d marks which target ids exist)."""

import torch
from torch import nn

from scylla_impl.drafts.base import Draft, DraftConfig
from scylla_impl.drafts.eagle2 import decoder_stack
from scylla_impl.drafts.layers import RMSNorm


class Eagle3Draft(Draft):
    def __init__(self, config: DraftConfig, target):
        super().__init__(config, target)
        h = config.hidden_size
        vd = config.draft_vocab_size or config.vocab_size
        n_feats = len(config.feature_layers)
        self.fc = nn.Linear(n_feats * config.target_hidden_size, h, bias=False)
        self.embed_norm = RMSNorm(h, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps)
        self.layers = decoder_stack(config, first_input_norm=True, first_attn_in=2 * h)
        self.norm = RMSNorm(h, config.rms_norm_eps)
        self.lm_head = nn.Linear(h, vd, bias=False)
        # Until token counts set it, the draft vocabulary is the first vd target ids.
        self.register_buffer("d2t", torch.arange(vd), persistent=True)
        self.register_buffer("t2d", torch.arange(config.vocab_size) < vd, persistent=True)

    def _inputs(self, tokens, features, from_target):
        x = self.fc(features) if from_target else features
        emb = self.embed(tokens).to(x.dtype)
        return x, torch.cat([self.embed_norm(emb), self.hidden_norm(x)], dim=-1)

    def _head(self, out):
        return self.lm_head(self.norm(out))

    def to_target(self, draft_ids):
        return self.d2t[draft_ids]

    def set_vocab(self, token_counts: torch.Tensor) -> None:
        """Keep the draft_vocab_size most frequent target tokens (ties by id)."""
        vd = self.d2t.numel()
        order = torch.argsort(-token_counts.float(), stable=True)[:vd]
        d2t = torch.sort(order).values.to(self.d2t.device)
        self.d2t.copy_(d2t)
        self.t2d.zero_()
        self.t2d[d2t] = True
