"""N-gram lookup over each row's text so far: the proposal prompt lookup drafts from.

The last n tokens of a row (n = max_ngram down to 1) are looked up in everything the row holds
so far, prompt and output; the tokens that followed their most recent earlier occurrence are
the proposal (Saxena, 2023; transformers' `prompt_lookup_num_tokens`). The prompt-lookup draft
(drafts/lookup.py) builds its tree from it, and `decode.generate` can graft it under a trained
draft's tree (`DecodeConfig.lookup_tokens`).
"""

import torch

MAX_NGRAM = 3


def lookup(history: list[int], max_ngram: int, length: int) -> list[int]:
    """Up to `length` tokens that followed the most recent earlier match of the longest suffix
    n-gram (n <= max_ngram) of `history`; [] when nothing matches."""
    for n in range(min(max_ngram, len(history) - 1), 0, -1):
        suffix = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):  # most recent occurrence first
            if history[start:start + n] == suffix:
                return history[start + n:start + n + length]
    return []


class Ngrams:
    """Each row's text so far (prompt and committed output) and its lookup proposal: what prompt
    lookup drafts from, and what `decode.generate` grafts under a trained draft's tree
    (`DecodeConfig.lookup_tokens`)."""

    def __init__(self, max_ngram: int = MAX_NGRAM, max_tokens: int = 16):
        self.max_ngram, self.max_tokens = max_ngram, max_tokens
        self.history: list[list[int]] = []
        self.proposals: list[list[int]] = []

    def start(self, prompts: list[list[int]]) -> None:
        # Pairs bring tokens 1.. of each prompt, then each step's new tokens: seed with token 0.
        self.history = [list(p[:1]) for p in prompts]

    def extend(self, tokens: torch.Tensor, counts: torch.Tensor) -> list[list[int]]:
        """Append counts[r] tokens of tokens [b, q] to row r; returns each row's new proposal."""
        for r, (row, n) in enumerate(zip(tokens.tolist(), counts.tolist())):
            self.history[r] += row[:n]
        self.proposals = [lookup(h, self.max_ngram, self.max_tokens) for h in self.history]
        return self.proposals

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.history = [self.history[r] for r in rows.tolist()]
        self.proposals = [self.proposals[r] for r in rows.tolist()] if self.proposals else []
