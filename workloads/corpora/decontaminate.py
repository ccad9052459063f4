"""Decontamination: drop every training document that contains an evaluation prompt.

A draft trained on the benchmark's own prompts would inflate acceptance. We use word n-gram
overlap, as GPT-3 and later LLM reports do: text is lower-cased and split into words (\\w+),
and a document is contaminated when it shares any 13-word sequence with an evaluation prompt.
Prompts shorter than 13 words are matched whole instead (if they have at least 6 words:
shorter ones are phrases such as "Who wrote Hamlet?" whose presence proves nothing).

Matching is vectorised: words map to random 64-bit keys and each window gets a polynomial
hash, so a 20M-word corpus is checked in seconds rather than minutes of tuple building.
"""

import re
from collections.abc import Iterable

import numpy as np

WORD = re.compile(r"\w+")
NGRAM = 13
MIN_WORDS = 6
_BASE = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class Decontaminator:
    def __init__(self, eval_texts: Iterable[str], n: int = NGRAM, min_words: int = MIN_WORDS):
        self.n = n
        self.vocab: dict[str, int] = {}
        grams: dict[int, set[tuple[int, ...]]] = {}
        self.n_prompts = 0
        for text in eval_texts:
            ids = [self.vocab.setdefault(w, len(self.vocab)) for w in words(text)]
            if len(ids) < min_words:
                continue
            self.n_prompts += 1
            width = min(n, len(ids))
            bucket = grams.setdefault(width, set())
            bucket.update(tuple(ids[i:i + width]) for i in range(len(ids) - width + 1))
        rng = np.random.default_rng(0)
        self._keys = rng.integers(1, 2**63, size=len(self.vocab) + 1, dtype=np.uint64)
        # width -> sorted hashes of the eval n-grams of that width
        self._tables = {w: np.unique(self._hash(np.array(list(g), dtype=np.int64), w))
                        for w, g in grams.items()}

    def _hash(self, windows: np.ndarray, width: int) -> np.ndarray:
        """Hashes of rows of word ids (shape [m, width])."""
        h = np.zeros(len(windows), dtype=np.uint64)
        with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
            for j in range(width):
                h = h * _BASE + self._keys[windows[:, j]]
        return h

    def contaminated(self, text: str) -> bool:
        """Whether `text` contains any evaluation n-gram (or a whole short prompt)."""
        ids = np.fromiter((self.vocab.get(w, -1) for w in words(text)), dtype=np.int64)
        for width, table in self._tables.items():
            if len(ids) < width or not len(table):
                continue
            # A window with a word never seen in any prompt cannot match: skip those.
            unknown = np.concatenate([[0], np.cumsum(ids < 0)])
            ok = (unknown[width:] - unknown[:-width]) == 0
            if not ok.any():
                continue
            keys = self._keys[np.where(ids < 0, len(self.vocab), ids)]
            h = np.zeros(len(ids) - width + 1, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(width):
                    h = h * _BASE + keys[j:len(ids) - width + 1 + j]
            h = h[ok]
            at = np.minimum(np.searchsorted(table, h), len(table) - 1)  # table is sorted
            if (table[at] == h).any():
                return True
        return False


def from_datasets(data_dir=None) -> Decontaminator:
    """A decontaminator over every prompt of all six datasets, from every source available."""
    from workloads.datasets import evaluation_texts

    return Decontaminator(t for texts in evaluation_texts(data_dir).values() for t in texts)
