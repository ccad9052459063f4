"""The one registry of decoding methods (scylla_impl/methods.py): every entry is complete enough
that the layers deriving their lists from it work without naming the method anywhere else."""

import subprocess
import sys

from scylla_impl.drafts.base import Draft
from scylla_impl.methods import (
    BASELINES,
    BY_NAME,
    METHODS,
    NAMES,
    REPORT_ORDER,
    TRAINED,
    TRAINING_FREE,
)
from scylla_impl.trained import ALIASES, DEFAULT_DRAFTS
from scylla_impl.training.config import recipe


def test_names_and_report_places_are_unique():
    assert len(set(NAMES)) == len(METHODS)
    assert sorted(m.report_order for m in METHODS) == list(range(len(METHODS)))
    assert set(REPORT_ORDER) == set(NAMES)
    assert all(BY_NAME[b].trained for b in BASELINES)


def test_every_draft_resolves_to_its_class():
    for name in TRAINED:
        cls = BY_NAME[name].draft_class
        assert issubclass(cls, Draft), name
        assert cls.max_layers >= max(BY_NAME[name].layers, default=1), name
    for name in TRAINING_FREE:
        assert callable(BY_NAME[name].draft_class)


def test_every_trained_method_has_a_recipe_and_default_drafts():
    for name in TRAINED:
        assert recipe(name, dtype="float32").method == name
        assert name in DEFAULT_DRAFTS
    for alias, name in ALIASES.items():
        assert DEFAULT_DRAFTS[alias] == DEFAULT_DRAFTS[name]


def test_the_registry_loads_without_torch():
    """The sweep spec and the report read it; `scylla --help` and a report never load torch."""
    code = "import sys, scylla_impl.methods, harness.spec, reports.tables; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
