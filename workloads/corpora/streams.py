"""Training streams: documents -> decontaminated -> tokenized -> packed -> mixed by ratio.

Each source is an endless stream (epochs reshuffled with the seed) so a token budget larger
than a small source is still met; how many epochs each source went through is counted, so a
run that repeats data says so. Sources are mixed per packed sequence by a deficit rule (the
source furthest below its share goes next), which holds the ratios exactly and needs no
randomness: the seed decides only document order.
"""

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from workloads.corpora.decontaminate import Decontaminator
from workloads.corpora.packing import PackedSequence, pack
from workloads.errors import ScyllaError


@dataclass
class SourceStats:
    documents: int = 0  # documents emitted (all epochs)
    dropped: int = 0  # documents dropped as contaminated (each counted once)
    sequences: int = 0
    tokens: int = 0  # tokens emitted in packed sequences
    epochs: int = 0  # passes started over the source's documents


def document_stream(
    name: str,
    items: Sequence,
    item_id: Callable[[object], str],
    text_of: Callable[[object], str],
    tokenize: Callable[[object, str], tuple[list[int], list[int]]],
    seed: int,
    stats: SourceStats,
    decontaminator: Decontaminator | None,
) -> Iterator[tuple[list[int], list[int]]]:
    dropped: set[str] = set()
    for epoch in itertools.count():
        order = list(range(len(items)))
        # A string seed is hashed with SHA-512 by `random`: stable across runs and machines.
        random.Random(f"{seed}:{name}:{epoch}").shuffle(order)
        stats.epochs = epoch + 1
        produced = False
        for index in order:
            item = items[index]
            key = item_id(item)
            if key in dropped:
                continue
            text = text_of(item)
            if not text.strip():
                continue
            if epoch == 0 and decontaminator is not None and decontaminator.contaminated(text):
                dropped.add(key)
                stats.dropped += 1
                continue
            ids, mask = tokenize(item, text)
            if not ids:
                continue
            produced = True
            stats.documents += 1
            yield ids, mask
        if not produced:
            raise ScyllaError(f"corpus source '{name}' has no usable documents")


class CorpusStream:
    """An iterator of PackedSequence with a token budget; `stats` tells what it drew from where."""

    def __init__(self, streams: dict[str, Iterator[tuple[list[int], list[int]]]], ratios: dict[str, float],
                 seq_len: int, n_sequences: int, stats: dict[str, SourceStats]):
        self.seq_len = seq_len
        self.n_sequences = n_sequences
        self.stats = stats
        self.ratios = ratios
        self._packed = {name: pack(stream, seq_len, name) for name, stream in streams.items()}
        self._emitted = 0

    def __iter__(self) -> "CorpusStream":
        return self

    def __next__(self) -> PackedSequence:
        if self._emitted >= self.n_sequences:
            raise StopIteration
        total = self._emitted + 1
        # Deficit rule: the source furthest below its share of sequences goes next.
        name = max(self._packed, key=lambda n: self.ratios[n] * total - self.stats[n].sequences)
        seq = next(self._packed[name])
        self._emitted += 1
        self.stats[name].sequences += 1
        self.stats[name].tokens += len(seq)
        return seq

    def __len__(self) -> int:
        return self.n_sequences

    @property
    def dropped_documents(self) -> int:
        return sum(s.dropped for s in self.stats.values())
