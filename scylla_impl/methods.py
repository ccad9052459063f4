"""The decoding methods, in one registry: `METHODS`.

Every list of methods elsewhere derives from it: the sweep's known methods and random
drafts, the trainable methods and their default drafts, the report's order, labels and
baselines, the recipe fields its drafts train with apart from every method's. What a draft
does differently as a model (its own LM head, no feature regression, ...) is an attribute of
its draft class (drafts/base.py), never a comparison of method names. Adding a draft method is
its module under scylla_impl/drafts/ and its `Method` here.

This module imports no torch: the sweep spec, the report and `scylla train --help` read it
without loading the engine, so a draft class is named "module:Class", as harness/cli.py names
its commands, and imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workloads.errors import ScyllaError

if TYPE_CHECKING:
    from scylla_impl.drafts.base import Draft


@dataclass(frozen=True)
class Method:
    name: str  # as sweeps, cells and checkpoints spell it
    label: str  # as the report prints it
    report_order: int  # its place in the report's tables and figures
    color: str  # its colour in the report's figures
    draft: str | None = None  # "module:Class" of its draft; None: no draft (AR)
    trained: bool = False  # its draft needs training (a checkpoint); False: training-free or none
    baseline: bool = False  # the report sets Scylla's measured tau against it
    # Decoder layer counts of its default trained drafts when it has several depths, each draft
    # named "<name>-<layers>" and the method's own name standing for the last one; (): one
    # draft, named after the method.
    layers: tuple[int, ...] = ()
    # (TrainConfig field, value) its training recipe sets apart from every method's
    # (training/config.py `recipe`).
    recipe: tuple[tuple[str, object], ...] = ()

    @property
    def draft_class(self) -> type[Draft]:
        if self.draft is None:
            raise ScyllaError(f"method '{self.name}' has no draft")
        module, attr = self.draft.split(":")
        return getattr(importlib.import_module(module), attr)

    def draft_name(self, layers: int | None) -> str:
        """The name of its trained draft with `layers` decoder layers: eagle2, scylla-3."""
        return f"{self.name}-{layers or 1}" if self.layers else self.name


# How a trained draft's first layer takes the token's embedding and the feature
# (drafts/base.py: DraftConfig.draft_input): projected to the hidden size, or read concatenated.
PROJECTION, CONCAT = DRAFT_INPUTS = ("projection", "concat")

# In the order the CLI lists them; the report orders them by report_order.
METHODS: tuple[Method, ...] = (
    Method("ar", "AR", report_order=0, color="#7f7f7f"),
    Method("eagle2", "EAGLE-2", report_order=2, color="#4c72b0", draft="scylla_impl.drafts.eagle2:Eagle2Draft", trained=True,
           baseline=True),
    # No feature regression to anchor its hidden state, so it learns from the soft CE alone across
    # unrolled steps; no input noise (the unrolled steps play that role).
    Method("eagle3", "EAGLE-3", report_order=3, color="#dd8452", draft="scylla_impl.drafts.eagle3:Eagle3Draft", trained=True,
           baseline=True, recipe=(("noise", 0.0), ("feature_weight", 0.0), ("ce_weight", 1.0))),
    Method("scylla", "Scylla", report_order=4, color="#55a868", draft="scylla_impl.drafts.scylla:ScyllaDraft", trained=True,
           layers=(1, 3)),
    Method("lookup", "Prompt lookup", report_order=1, color="#937860", draft="scylla_impl.drafts.lookup:PromptLookupDraft"),
)
BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
NAMES = tuple(BY_NAME)
TRAINED = tuple(m.name for m in METHODS if m.trained)
# A training-free method's draft spec is its name (`--draft lookup`).
TRAINING_FREE = tuple(m.name for m in METHODS if m.draft is not None and not m.trained)
BASELINES = tuple(m.name for m in METHODS if m.baseline)
REPORT_ORDER = tuple(m.name for m in sorted(METHODS, key=lambda m: m.report_order))
LABELS = {n: BY_NAME[n].label for n in REPORT_ORDER}
COLORS = {n: BY_NAME[n].color for n in REPORT_ORDER}


def check_draft_spec(spec: str) -> None:
    """A draft as `load_draft` takes it: 'oracle', a training-free method, random:<method>, or a
    checkpoint folder that exists (what is in it, load_draft reads). Anything else is one line,
    said before the engine loads."""
    if spec in ("oracle", *TRAINING_FREE) or spec.startswith("random:") or Path(spec).exists():
        return
    free = ", ".join(f"'{s}'" for s in ("oracle", *TRAINING_FREE))
    raise ScyllaError(f"draft '{spec}' not found: give a checkpoint folder, {free} or random:{{{','.join(TRAINED)}}}")


__all__ = ["BASELINES", "BY_NAME", "COLORS", "CONCAT", "DRAFT_INPUTS", "PROJECTION", "LABELS", "METHODS", "NAMES", "REPORT_ORDER", "TRAINED", "TRAINING_FREE",
           "Method", "check_draft_spec"]
