"""Where trained drafts for a target live: SCYLLA_HOME/drafts/<target fingerprint>/<name>.

Names: eagle2, eagle3, scylla-1, scylla-3 (the four drafts of the comparison, one recipe and
one token budget each), and scylla, the default `scylla generate` uses: the Scylla-3 draft.

A fresh machine has none. `default_draft_spec` then says exactly how to get one, and
`ensure_trained_draft` trains the default recipe on first use (a progress bar, a message of
what it does and how long it takes; an interrupted run resumes where it stopped) and keeps
it here for every later run. Nothing falls back to a random draft.
"""

import sys
from pathlib import Path

from scylla_impl.methods import METHODS
from workloads.cache import scylla_home
from workloads.errors import ScyllaError

# name -> (method, decoder layers): each trained method's default drafts (methods.py)
DEFAULT_DRAFTS: dict[str, tuple[str, int | None]] = {
    m.draft_name(n): (m.name, n) for m in METHODS if m.trained for n in (m.layers or (None,))
}
# A method with several depths: its own name is its last draft (the default draft is the Scylla-3 one).
ALIASES = {m.name: m.draft_name(m.layers[-1]) for m in METHODS if m.trained and m.layers}
DEFAULT_DRAFTS.update({alias: DEFAULT_DRAFTS[name] for alias, name in ALIASES.items()})
# Minutes of the default recipe per draft on 2 CPU cores, by the precision training runs in
# (precision.fast_dtype), and minutes once per target for its answers and features.
# bf16, a 2-core Xeon with AMX: 6.5 min of training for EAGLE-2, 7.3 for EAGLE-3, 11.2 for
# Scylla-3, answers and features about 4; an AVX512-BF16 EPYC without AMX: 5.3, 6.0 and 9.8, and 3.2.
# fp32, a 2-core AVX2 EPYC (bf16 emulated): EAGLE-2 13.9 min (measured first use: answers 9.4,
# made in prompt order then, and features 6.1); EAGLE-3 and Scylla-3 train at 586 and 387
# tokens/s there, about 17 and 25 min for the recipe's 590k token passes.
RECIPE_MINUTES = {"bfloat16": ("6-12", "4"), "float32": ("14-25", "13-16")}


def recipe_minutes(target) -> str:
    """How long the default recipe takes here, for the messages that offer or start it."""
    from scylla_impl.precision import fast_dtype

    dtype = fast_dtype(str(target.device))
    per_draft, once = RECIPE_MINUTES[dtype]
    return f"about {per_draft} min a draft on 2 CPU cores in {dtype}, and {once} min once per target for its answers and features"


def drafts_dir(target) -> Path:
    return scylla_home() / "drafts" / target.info.fingerprint


def is_trained(folder: Path) -> bool:
    """Whether `folder` holds a finished draft (a run writes these two files last)."""
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def trained_draft(target, name: str = "scylla") -> Path | None:
    """The trained draft `name` for `target` if there is one. An alias is its draft's own
    folder ("scylla" is drafts_dir/scylla-3), never a copy that a retraining would leave stale."""
    for folder in (drafts_dir(target) / ALIASES.get(name, name), drafts_dir(target) / name):
        if is_trained(folder):
            return folder
    return None


def train_command(name: str) -> str:
    method, layers = DEFAULT_DRAFTS[name]
    stored = ALIASES.get(name, name)
    return f"scylla train --method {method}" + (f" --layers {layers}" if layers else "") + f" --name {stored}"


def default_draft_spec(target, name: str = "scylla") -> str:
    """The trained draft `name` for `target`, or a clear error saying how to get one."""
    found = trained_draft(target, name)
    if found is not None:
        return str(found)
    how = (f"train it with `{train_command(name)}"
           + (f" --target {target.info.path}" if target.info.name != _default_name() else "") + "`"
           if name in DEFAULT_DRAFTS else "train one with `scylla train`")
    raise ScyllaError(
        f"no trained '{name}' draft for target '{target.info.name}' in {drafts_dir(target)}; {how} "
        f"(the default recipe takes {recipe_minutes(target)}) or pass --draft "
        "(a checkpoint folder, or random:scylla for an untrained one)"
    )


def _default_name() -> str:
    from scylla_impl.embedded import DEFAULT_NAME

    return DEFAULT_NAME


def ensure_trained_draft(target, name: str = "scylla", progress: str = "auto") -> str:
    """The trained draft `name` for `target`, training the default recipe first if it is missing
    or was trained by an earlier recipe (the default draft is what today's recipe trains)."""
    found = trained_draft(target, name)
    if name not in DEFAULT_DRAFTS:
        if found is not None:
            return str(found)
        raise ScyllaError(f"no default recipe for a draft named '{name}'; known: {', '.join(DEFAULT_DRAFTS)}")

    from scylla_impl.training.config import CONFIG_FILE, recipe
    from scylla_impl.training.run_folder import same_run

    method, layers = DEFAULT_DRAFTS[name]
    stored = ALIASES.get(name, name)
    folder = drafts_dir(target) / stored
    config = recipe(method, layers=layers, target=target.info.path, name=stored)
    started = (folder / CONFIG_FILE).is_file()
    current = not started or same_run(folder, config)
    if found is not None and current:
        return str(found)
    if not current:
        print(f"The '{name}' draft in {folder} was trained by an earlier default recipe: retraining it.",
              file=sys.stderr, flush=True)
    print(f"No trained '{name}' draft for {target.info.name} yet: training the default {method} recipe "
          f"({config.pretrain_tokens} pretraining + {config.sft_tokens} chat tokens, {recipe_minutes(target)}) "
          f"into {folder}; it is kept for later runs, and an interrupted run "
          f"{'resumes now' if started and current else 'resumes where it stopped'}.", file=sys.stderr, flush=True)
    train_or_resume(config, folder, target, progress=progress, retrain_other=True)
    return str(trained_draft(target, name))


def train_or_resume(config, folder: Path, target, *, progress: str = "auto", retrain_other: bool = False) -> Path:
    """The draft `config` trains, in `folder`: kept if finished, resumed from its last checkpoint
    if started, else trained. A folder started with another config is refused, or retrained from
    scratch with `retrain_other`. The target's features come in the config's precision: a target
    loaded in another is reloaded in it for the training."""
    from scylla_impl.target import Target, resolve_dtype
    from scylla_impl.training.config import CONFIG_FILE
    from scylla_impl.training.loop import train
    from scylla_impl.training.run_folder import same_run

    started = (folder / CONFIG_FILE).is_file()
    current = not started or same_run(folder, config)
    if not current and not retrain_other:
        raise ScyllaError(f"'{folder}' was trained with other options; remove it, or choose another folder")
    if current and is_trained(folder):
        return folder
    resume = started and current
    if target.dtype != resolve_dtype(config.dtype):
        target = Target.load(target.info.path, dtype=config.dtype, device=str(target.device))
    train(None if resume else config, folder, resume=resume, force=not resume, target=target, progress=progress)
    return folder
