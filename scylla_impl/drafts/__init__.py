"""Draft models behind one interface, and the one way to get one: `load_draft(spec, target)`."""

from pathlib import Path

import torch

from scylla_impl.drafts import interop
from scylla_impl.drafts.base import (
    Draft,
    DraftConfig,
    DraftInfo,
    check_target,
    load_weights,
    place,
    read_config,
)
from scylla_impl.drafts.lookup import PromptLookupDraft
from scylla_impl.drafts.oracle import OracleDraft
from scylla_impl.methods import BY_NAME, TRAINED, TRAINING_FREE, check_draft_spec
from workloads.errors import ScyllaError


def new_draft(method: str, target, layers: int | None = None, seed: int = 0, draft_vocab: int | None = None,
              draft_input: str | None = None, dtype: torch.dtype | None = None, **overrides) -> Draft:
    """A freshly initialised draft of `method` for `target` (random weights, seeded). `draft_vocab`:
    size of the reduced vocabulary (capped at the target's; 0 = the full vocabulary); `draft_input`:
    its input path (DraftConfig.draft_input; None: the method's own); `dtype`: see `place`."""
    if method not in TRAINED:
        raise ScyllaError(f"unknown draft method '{method}'; known: {', '.join(TRAINED)}")
    cls = BY_NAME[method].draft_class
    if draft_vocab is None:
        draft_vocab = cls.untrained_vocab
    if draft_vocab < 0:
        raise ScyllaError(f"draft vocabulary size must be >= 0 (0 = the target's), got {draft_vocab}")
    overrides["draft_vocab_size"] = min(draft_vocab, target.info.vocab_size)
    if cls.fuses_layers:
        from scylla_impl.target import default_layer_choice

        overrides.setdefault("feature_layers", list(default_layer_choice(target.info.num_layers)))
    if layers is not None:
        if cls.max_layers == 1 and layers != 1:
            raise ScyllaError(f"--layers applies to scylla drafts; {method} has one decoder layer")
        overrides["num_layers"] = layers
    if draft_input is not None:
        overrides["draft_input"] = draft_input
    config = DraftConfig.from_target(method, target, **overrides)
    torch.manual_seed(seed)
    draft = cls(config, target)
    return place(draft, target, dtype)


def load_draft(spec: str | None, target, layers: int | None = None, seed: int = 0, dtype: torch.dtype | None = None):
    """None/'none' -> None (AR); 'oracle'; 'lookup' (prompt lookup, training-free);
    'random:<method>'; or a checkpoint folder: this project's, or an EAGLE-1/2 or EAGLE-3 /
    SpecForge one (interop.py). A trained method's draft is placed for decoding beside `target`
    (`place`; `dtype` None: the precision decoding gives it, base.decode_dtype)."""
    if spec in (None, "", "none", "ar"):
        return None
    if spec == "oracle":
        return OracleDraft(target)
    if spec in TRAINING_FREE:
        return BY_NAME[spec].draft_class(target)
    if spec.startswith("random:"):
        return new_draft(spec.split(":", 1)[1], target, layers=layers, seed=seed, dtype=dtype)
    check_draft_spec(spec)
    folder = Path(spec)
    if interop.is_foreign(folder):  # an EAGLE-1/2 or EAGLE-3 / SpecForge checkpoint
        return place(interop.import_draft(folder, target), target, dtype)
    config = read_config(folder)
    check_target(config, target, folder)
    if config.method not in TRAINED:
        raise ScyllaError(f"draft '{folder}' has unknown method '{config.method}'")
    draft = BY_NAME[config.method].draft_class(config, target)
    load_weights(draft, folder)
    draft.checkpoint = str(folder)
    return place(draft, target, dtype)


__all__ = ["Draft", "DraftConfig", "DraftInfo", "OracleDraft", "PromptLookupDraft", "load_draft", "new_draft"]
