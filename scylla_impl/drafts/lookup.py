"""Prompt lookup: the training-free draft (Saxena, 2023; transformers' `prompt_lookup_num_tokens`).

Its proposal is the n-gram match of scylla_impl/ngrams.py: the tokens that followed the most
recent earlier occurrence of the row's last few tokens. It needs no weights and reads no target
features, so every report can show what a user gets with no draft training at all.

It drives the same tree builder as the trained drafts: log-probs are 0 on the proposed token
and -inf elsewhere, so the proposal is the tree's best chain (with top_k 1, the whole tree).
Each node's "output" carries one number, 1 when the node lies on the proposal, so a level
knows which of its frontier nodes to extend.
"""

import torch

from scylla_impl.drafts.base import DraftInfo
from scylla_impl.ngrams import MAX_NGRAM, Ngrams


class PromptLookupDraft:
    feature_layers: tuple[int, ...] = ()

    def __init__(self, target, max_ngram: int = MAX_NGRAM, max_tokens: int = 16):
        self.draft_vocab = target.info.vocab_size
        self.device = target.device
        self.ngrams = Ngrams(max_ngram, max_tokens)
        self.info = DraftInfo("lookup", 0, "lookup")

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids

    def start(self, prompts: list[list[int]], capacity: int = 256) -> None:
        self.ngrams.start(prompts)

    def _one_hot(self, chosen: list[list[int | None]]) -> torch.Tensor:
        """[b, k, V] log-probs: 0 at each node's proposed token, -inf elsewhere (and everywhere
        for a node with no proposal)."""
        b, k = len(chosen), len(chosen[0])
        logprobs = torch.full((b, k, self.draft_vocab), float("-inf"), device=self.device)
        for r, row in enumerate(chosen):
            for j, token in enumerate(row):
                if token is not None:
                    logprobs[r, j, token] = 0.0
        return logprobs

    def extend(self, tokens, features, counts):
        proposals = self.ngrams.extend(tokens, counts)
        first = [[p[0] if p else None] for p in proposals]
        on_chain = torch.tensor([[1.0 if p else 0.0] for p in proposals], device=self.device)
        return self._one_hot(first)[:, 0], on_chain  # [b, V], [b, 1]

    def expand(self, tokens, hidden, depths, new_mask):
        """Frontier nodes [b, k] at depth `depths + 1`: the node on the proposal gets its next token."""
        level = int(depths[0, 0]) + 1  # depth of the frontier nodes
        on_chain = (hidden[..., 0] > 0).tolist()
        chosen, out = [], torch.zeros(hidden.shape, device=self.device)
        for r, (row, proposal) in enumerate(zip(tokens.tolist(), self.ngrams.proposals)):
            picks = []
            for j, token in enumerate(row):
                follows = on_chain[r][j] and level < len(proposal) and token == proposal[level - 1]
                picks.append(proposal[level] if follows else None)
                out[r, j, 0] = float(follows)
            chosen.append(picks)
        return self._one_hot(chosen), out

    def rollback(self) -> None:
        """Nothing tentative is kept: the history grows only in `extend`, by committed tokens."""

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.ngrams.keep_rows(rows)
