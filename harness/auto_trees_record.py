"""What a sweep's OUT/auto_trees.json holds, read without torch: its file name, and each tree
choice in it. harness/auto_trees.py writes the record; the report reads it from here, so
rendering a report (or refusing a bad results folder) never loads torch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from roofline.tree_policy import Spread, TreeChoice, chain_label

RECORD = "auto_trees.json"


def unit_name(draft: str, lookup_tokens: int) -> str:
    """What a record prices: a draft, or a draft with a lookup chain grafted under its trees."""
    return draft + chain_label(lookup_tokens)


@dataclass(frozen=True)
class RecordedChoice:
    draft: str
    lookup_tokens: int  # the unit's chain (0: none)
    dataset: str | None  # None in records from before trees were priced per dataset
    batch_size: int
    choice: TreeChoice
    ar: TreeChoice | None  # AR's price; None in records from before it was kept
    spread: Spread | None  # what a run of the sweep's prompts would measure; None for AR, and in older records

    @property
    def speedup(self) -> float | None:
        """Predicted spec/AR: the two priced tokens/s of the same rows (None where AR's price was not kept)."""
        return None if self.ar is None else self.choice.tokens_per_s / self.ar.tokens_per_s


def recorded_choices(record: dict[str, Any]) -> Iterator[RecordedChoice]:
    """Each choice in a record. Records written before trees were priced per dataset hold one
    choice for all of them; records from before chains were priced hold none."""
    for unit, per in record["drafts"].items():
        chain = int(per.get("lookup_tokens", 0))
        draft = unit.removesuffix(chain_label(chain))
        for dataset, priced in per.get("datasets", {None: per}).items():
            for b, entry in priced["batch_sizes"].items():
                yield RecordedChoice(draft, chain, dataset, int(b), TreeChoice(**entry["choice"]),
                                     TreeChoice(**entry["ar"]) if "ar" in entry else None,
                                     Spread.from_json(entry["spread"]) if "spread" in entry else None)
