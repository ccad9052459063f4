"""Oracle draft for tests: the target itself, so its greedy chain is the target's own
greedy continuation. It keeps a separate target cache and ignores the features."""

import torch
import torch.nn.functional as F

from scylla_impl.drafts.base import DraftInfo


class OracleDraft:
    feature_layers: tuple[int, ...] = ()

    def __init__(self, target):
        self.target = target
        self.cache = None
        self.info = DraftInfo("oracle", target.info.num_layers, "oracle")
        self.draft_vocab = target.info.vocab_size

    def to_target(self, draft_ids):
        return draft_ids

    def start(self, prompts: list[list[int]], capacity: int = 256) -> None:
        # Seed with each prompt's first token: pairs then bring tokens 1.. at their true positions.
        self.cache = self.target.new_cache(len(prompts), capacity)
        self.target.prefill(self.cache, [p[:1] for p in prompts])

    @torch.no_grad()
    def extend(self, tokens, features, counts):
        b, q = tokens.shape
        idx = torch.arange(q, device=self.cache.device)
        causal = (idx[:, None] >= idx[None, :]).expand(b, q, q)
        out = self.target.forward(self.cache, tokens, idx.expand(b, q), causal)
        self.cache.commit(idx.expand(b, q), counts)
        rows = torch.arange(b, device=self.cache.device)
        last = counts.to(self.cache.device) - 1
        return F.log_softmax(out.logits[rows, last], dim=-1), out.hidden[rows, last]

    @torch.no_grad()
    def expand(self, tokens, hidden, depths, new_mask):
        # This cache also holds the root, so `depths` (one less than the node's depth)
        # land each node at its true position, one past where a pair-based draft puts it.
        out = self.target.forward(self.cache, tokens, depths, new_mask)
        return F.log_softmax(out.logits, dim=-1), out.hidden

    def rollback(self) -> None:
        self.cache.rollback()

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.cache.keep_rows(rows)
