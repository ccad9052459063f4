"""Source 1: a local folder of EAGLE-format files, `<dir>/<eagle-name>/question.jsonl`.

These are the exact files the EAGLE and Scylla papers measured on, so they come first.
Records are {question_id, category, turns, reference?}; `reference` is a list (one per turn).
"""

import hashlib
from pathlib import Path

from workloads.errors import ScyllaError
from workloads.jsonl import decode_text, iter_jsonl
from workloads.prompt import DatasetInfo, Prompt
from workloads.sources import Loaded, SourceUnavailable

QUESTION_FILE = "question.jsonl"


def question_file(data_dir: Path, eagle_name: str) -> Path:
    return data_dir / eagle_name / QUESTION_FILE


def load(dataset: str, eagle_name: str, data_dir: Path) -> Loaded:
    path = question_file(data_dir, eagle_name)
    if not path.is_file():
        raise SourceUnavailable(f"no {path}")
    data = path.read_bytes()
    prompts = parse(data, dataset, str(path))
    info = DatasetInfo(
        name=dataset,
        n_records=len(prompts),
        source="eagle-dir",
        checksum=hashlib.sha256(data).hexdigest(),
        license=_folder_license(data_dir),
        location=str(path),
    )
    return Loaded(prompts, info)


def parse(data: bytes, dataset: str, where: str) -> list[Prompt]:
    prompts = []
    for number, record in iter_jsonl(decode_text(data, where), where):
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
            raise ScyllaError(f"{where}, line {number}: 'turns' must be a non-empty list of strings")
        if "question_id" not in record:
            raise ScyllaError(f"{where}, line {number}: no 'question_id'")
        refs = record.get("reference") or ()
        if isinstance(refs, str):
            refs = (refs,)
        prompts.append(Prompt(
            id=str(record["question_id"]),
            category=str(record.get("category") or ""),
            turns=tuple(turns),
            reference=refs[0] if refs else None,
            dataset=dataset,
            references=tuple(str(r) for r in refs),
        ))
    if not prompts:
        raise ScyllaError(f"{where}: no records")
    return prompts


def _folder_license(data_dir: Path) -> str | None:
    """The EAGLE files are Apache-2.0 (their LICENSE says so); another folder may say otherwise."""
    license_file = data_dir / "LICENSE"
    if not license_file.is_file():
        return None
    head = license_file.read_text(errors="replace")[:2000]
    return "Apache-2.0" if "Apache License" in head else "see " + str(license_file)
