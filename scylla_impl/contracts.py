"""The two objects a decode step drives, and what each promises (typing only: nothing here runs).

`decode.generate` and `tree.build_tree` take a `TargetModel` (scylla_impl.target.Target is
the one implementation) and a `DraftModel` (the trained drafts in drafts/, OracleDraft,
PromptLookupDraft). One step, as decode.generate runs it:

    tree   = build_tree(draft, root_logprobs, root_out, roots, ...)   # draft.expand per level, then rollback
    tree   = graft_chain(tree, ngrams.proposals, m)                     # with lookup_tokens m: the copy too
    scored = target.forward_tree(cache, tree.tokens, tree.depths, tree.mask, layers)
    verdict = verify(tree, scored.logits, ...)                          # accepted path per row
    target.commit(cache, verdict.path, kept)                            # the path stays, the rest goes
    root_logprobs, root_out = draft.extend(new_tokens, path_features, kept)

Shapes: b rows, q tokens in one forward, n = tree tokens, V the target's vocabulary, V' the
draft's (V' <= V), h the draft's hidden size, f the width of the features it reads.
"""

from typing import Protocol

import torch

from scylla_impl.kv_cache import RowKVCache


class TargetModel(Protocol):
    device: torch.device
    dtype: torch.dtype  # the weights' and activations' precision (logits come back as float32)
    eos_ids: frozenset[int]

    def new_cache(self, batch_size: int, capacity: int = 256) -> RowKVCache:
        """An empty cache of `batch_size` rows with room for `capacity` slots (it grows if needed)."""

    def prefill(self, cache: RowKVCache, prompts: list[list[int]], layers: tuple[int, ...] = ()):
        """Run the prompts (rows may differ in length) and commit them. Returns logits [b, 1, V]
        at each row's last token, and its features for every prompt position: `hidden`
        [b, T, h_t] (post-norm last layer) or, with `layers`, `layer_inputs` [b, T, f]."""

    def forward_tree(self, cache: RowKVCache, tokens: torch.Tensor, depths: torch.Tensor, mask: torch.Tensor,
                     layers: tuple[int, ...] = ()):
        """Score tokens [b, n] at positions length + depths [b, n], each seeing the committed
        prefix and the tree tokens `mask` [b, n, n] allows (its ancestors and itself). Their
        keys and values stay tentative in the cache until `commit` or `rollback`. Returns
        logits [b, n, V] and the features at every tree token, as `prefill` does."""

    def commit(self, cache: RowKVCache, keep: torch.Tensor, counts: torch.Tensor) -> None:
        """Keep, per row, tentative slots keep[row, :counts[row]] (tree indices, ascending)
        after the row's committed tokens; drop every other tentative slot."""

    def rollback(self, cache: RowKVCache) -> None:
        """Drop every tentative slot."""

    def keep_rows(self, cache: RowKVCache, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` [b'] (ascending) of `cache`, nothing tentative in it:
        rows that finished leave the batch."""


class DraftModel(Protocol):
    feature_layers: tuple[int, ...]  # the target layers whose inputs it reads; () = the last hidden state
    draft_vocab: int  # V': the tokens it can propose

    def start(self, prompts: list[list[int]], capacity: int = 256) -> None:
        """Forget any earlier request and open a cache for these prompts."""

    def extend(self, tokens: torch.Tensor, features: torch.Tensor, counts: torch.Tensor):
        """Commit pairs (token t+1, feature t): tokens [b, q], the target's features [b, q, f],
        counts [b] of pairs that are real per row (the rest is padding). Returns the prediction
        after each row's last real pair: log-probabilities [b, V'] and hidden state [b, h]."""

    def expand(self, tokens: torch.Tensor, hidden: torch.Tensor, depths: torch.Tensor, new_mask: torch.Tensor):
        """Score one tree level from the draft's own predictions, tentatively: tokens [b, k]
        (target ids), the parents' hidden states [b, k, h], depths [b, k] below the root,
        and new_mask [b, k, tentative + k] (which tentative slots each may see). Returns
        log-probabilities [b, k, V'] and hidden states [b, k, h]."""

    def rollback(self) -> None:
        """Drop what `expand` added since the last `extend`."""

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` [b'] (ascending) of the request, between steps (after
        `rollback`, before `extend`): rows that finished leave the batch."""

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary ids -> target ids (the identity without a reduced vocabulary)."""


__all__ = ["DraftModel", "TargetModel"]
