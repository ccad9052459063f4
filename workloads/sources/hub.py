"""Source 3: the public originals on the Hugging Face hub, for users who are online.

Opt-in (SCYLLA_ALLOW_HUB=1): the packaged sources are pinned by checksum and work offline, so
results stay reproducible by default; the hub is a convenience, never needed by tests. The
revision actually read is resolved to a commit and recorded in the dataset's source.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from workloads import records
from workloads.errors import ScyllaError
from workloads.jsonl import decode_text, iter_jsonl
from workloads.prompt import DatasetInfo
from workloads.sources import Loaded, SourceUnavailable

ENABLE_VAR = "SCYLLA_ALLOW_HUB"


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    pattern: str  # files of the split, matched with fnmatch so shard names may change
    rows: Callable[[list[dict]], list[dict]]  # hub records -> rows for records.BUILDERS
    license: str


def _numbered(prefix: str, fields: dict[str, str]) -> Callable[[list[dict]], list[dict]]:
    """Rows keyed by position (the hub split has no id), with the hub's field names renamed."""
    def convert(items: list[dict]) -> list[dict]:
        return [{"id": f"{prefix}/{i}", **{ours: item.get(theirs) for ours, theirs in fields.items()}}
                for i, item in enumerate(items)]
    return convert


def _same(items: list[dict]) -> list[dict]:
    return items


HUB: dict[str, HubSource] = {
    "mt_bench": HubSource("HuggingFaceH4/mt_bench_prompts", "raw/question.jsonl", _same, "Apache-2.0"),
    "humaneval": HubSource("openai/openai_humaneval", "openai_humaneval/test-*.parquet", _same, "MIT"),
    "gsm8k": HubSource("openai/gsm8k", "main/test-*.parquet",
                       _numbered("gsm8k-test", {"question": "question", "answer": "answer"}), "MIT"),
    "alpaca": HubSource("tatsu-lab/alpaca_eval", "alpaca_eval.json",
                        _numbered("alpaca_eval", {"instruction": "instruction", "output": "output", "dataset": "dataset"}),
                        "CC BY-NC 4.0 (non-commercial use only)"),
    "natural_questions": HubSource("google-research-datasets/nq_open", "nq_open/validation-*.parquet",
                                   _numbered("nq-open-test", {"question": "question", "answers": "answer"}),
                                   "CC BY-SA 3.0"),
    "cnn_dm": HubSource("abisee/cnn_dailymail", "3.0.0/test-*.parquet",
                        lambda items: [{"id": i.get("id"), "article": i.get("article"), "highlights": i.get("highlights")}
                                       for i in items],
                        "Apache-2.0 (dataset scripts); articles (c) CNN / Daily Mail"),
}


def enabled() -> bool:
    return os.environ.get(ENABLE_VAR, "") not in ("", "0", "false", "no")


def load(dataset: str, *, full: bool = False) -> Loaded:
    source = HUB[dataset]
    if not enabled():
        raise SourceUnavailable(f"hub not enabled (set {ENABLE_VAR}=1 to load {source.repo_id})")
    try:
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi()
        revision = api.dataset_info(source.repo_id).sha
        names = sorted(f for f in api.list_repo_files(source.repo_id, repo_type="dataset", revision=revision)
                       if fnmatch(f, source.pattern))
        if not names:
            raise SourceUnavailable(f"{source.repo_id} has no files matching {source.pattern}")
        paths = [Path(hf_hub_download(source.repo_id, n, repo_type="dataset", revision=revision)) for n in names]
    except SourceUnavailable:
        raise
    except Exception as err:  # offline, rate-limited, gated: all mean "not from here"
        raise SourceUnavailable(f"hub {source.repo_id}: {type(err).__name__}: {str(err)[:200]}") from None
    digest = hashlib.sha256()
    items: list[dict] = []
    for path in paths:
        digest.update(path.read_bytes())
        items.extend(_read(path))
    where = f"hub:{source.repo_id}@{revision}/{source.pattern}"
    prompts = records.BUILDERS[dataset](source.rows(items), where)
    selection = f"all {len(prompts)} records"
    if not full:
        prompts, selection = records.select(dataset, prompts)
    info = DatasetInfo(dataset, len(prompts), f"hub:{source.repo_id}@{revision[:12]}", digest.hexdigest(),
                       source.license, where, selection)
    return Loaded(prompts, info)


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        # parquet list columns come back as numpy arrays; rows must be plain Python values.
        return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}
                for row in frame.to_dict(orient="records")]
    text = decode_text(path.read_bytes(), str(path))
    if path.suffix == ".jsonl":
        return [r for _, r in iter_jsonl(text, str(path))]
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ScyllaError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
