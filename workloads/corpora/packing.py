"""Packing tokenized documents into fixed-length training sequences.

Documents are concatenated end to end and cut every `seq_len` tokens, so no compute is spent
on padding; a document may continue into the next sequence. The loss mask travels with the
tokens, so a chat's assistant turns stay marked wherever the cut falls.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on first use: `scylla datasets` should not pay for it
    import torch


@dataclass(frozen=True)
class PackedSequence:
    input_ids: "torch.Tensor"  # LongTensor [seq_len]
    loss_mask: "torch.Tensor"  # LongTensor [seq_len] of 0/1: 1 where the token is trained on
    source: str = ""  # which corpus source filled it

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def pack(documents: Iterable[tuple[list[int], list[int]]], seq_len: int, source: str) -> Iterator[PackedSequence]:
    """Cut the concatenation of (ids, mask) documents into sequences of exactly `seq_len`;
    the incomplete tail of a finite stream is dropped rather than padded."""
    import torch

    ids: list[int] = []
    mask: list[int] = []
    for doc_ids, doc_mask in documents:
        ids += doc_ids
        mask += doc_mask
        while len(ids) >= seq_len:
            yield PackedSequence(
                torch.tensor(ids[:seq_len], dtype=torch.long),
                torch.tensor(mask[:seq_len], dtype=torch.long),
                source,
            )
            del ids[:seq_len], mask[:seq_len]
