"""EAGLE-3 draft (Li et al., 2025): features fused from three target layers (3h->h); its
first layer attends over cat(norm(embed), norm(feature)); its own norm and LM head over a
reduced draft vocabulary, mapped to target ids by d2t (t2d marks which target ids exist)."""

import torch
from torch import nn

from scylla_impl.drafts.base import Draft, DraftConfig
from scylla_impl.drafts.eagle2 import decoder_stack
from scylla_impl.drafts.layers import RMSNorm
from scylla_impl.methods import CONCAT


class Eagle3Draft(Draft):
    own_head = True
    regresses_features = False
    fuses_layers = True
    inputs = (CONCAT,)
    # An untrained draft gets a reduced vocabulary of this size, so decoding with random:eagle3
    # exercises the draft-to-target id map; trained drafts take theirs from the recipe.
    untrained_vocab = 8192

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

    def _inputs(self, tokens, features, from_target):
        x = self.fc(features) if from_target else features
        emb = self.embed(tokens).to(x.dtype)
        return x, torch.cat([self.embed_norm(emb), self.hidden_norm(x)], dim=-1)

    def _head(self, out):
        return self.lm_head(self.norm(out))
