"""What one decode is asked to do: the draft tree's shape, the sampling, the token budget. Plain
values, checked without torch, so a command refuses a bad one before the target loads."""

import math
from dataclasses import dataclass

from scylla_impl.tree_shape import check_shape
from workloads.errors import ScyllaError


@dataclass(frozen=True)
class DecodeConfig:
    top_k: int = 10
    depth: int = 5
    total_tokens: int = 60
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    # Up to this many tokens of the prompt-lookup proposal (ngrams.py) grafted under each draft
    # tree's root (tree.graft_chain): a trained draft guesses new text, the chain copies what
    # the prompt and the output already hold, and the verify keeps the longer. 0: none. AR
    # decoding (no draft) has no tree and ignores it, as it ignores the tree's shape.
    lookup_tokens: int = 0

    @property
    def tree_depth(self) -> int:
        """The deepest a tree node sits below its root: the draft's levels or the chain."""
        return max(self.depth, self.lookup_tokens)

    def validate(self, speculative: bool) -> None:
        if speculative:
            check_shape(self.top_k, self.depth, self.total_tokens)
        if self.lookup_tokens < 0:
            raise ScyllaError(f"lookup_tokens must be >= 0, got {self.lookup_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ScyllaError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ScyllaError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ScyllaError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
