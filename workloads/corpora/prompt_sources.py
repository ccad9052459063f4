"""Prompts a target answers to make its own SFT data, by domain.

ShareGPT is chat written for ChatGPT: it holds little code to complete and almost no
grade-school arithmetic, and a draft trained only on a small target's answers to it agrees with
that target on its answers to code and math prompts far less than on chat (measured: 0.25 top-1
at depth 1, against 0.35-0.45 on held-out chat). Two sources fill those domains from what is on
every machine, so no benchmark record is ever trained on:
  code  the Python standard library's public functions, cut to signature and docstring, framed
        as a completion request: the target writes the body;
  math  multi-step word problems from templates (names, items and numbers drawn by seed).
Each source yields (id, user text) in an order fixed by the seed.
"""

import ast
import functools
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from workloads.corpora.text_sources import read_source, stdlib_files, stdlib_root
from workloads.records import HUMANEVAL_FRAME

MIN_DOC_WORDS = 12  # shorter docstrings ("Return x.") leave nothing to complete from


@dataclass(frozen=True)
class PromptSource:
    name: str
    description: str
    prompts: Callable[[int], Iterator[tuple[str, str]]]  # seed -> (id, user text)


def _digest(text: str) -> str:
    """Ids name the text itself: cached answers are looked up by id across seeds and Python versions."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stub(node: ast.FunctionDef) -> str:
    """The function's signature and docstring, its body left for the target to write."""
    doc = ast.get_docstring(node, clean=False)
    stub = ast.FunctionDef(name=node.name, args=node.args, body=[ast.Expr(ast.Constant(doc))],
                           decorator_list=[], returns=node.returns, type_comment=None, type_params=[])
    return ast.unparse(ast.fix_missing_locations(stub)) + "\n"


@functools.cache
def _function_stubs() -> tuple[tuple[str, str], ...]:
    root = stdlib_root()
    found = []
    for path in stdlib_files():
        try:
            tree = ast.parse(read_source(path))
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= MIN_DOC_WORDS:
                    stub = _stub(node)
                    found.append((f"stdlib/{path.relative_to(root).as_posix()}:{node.name}/{_digest(stub)}", stub))
    return tuple(found)


def code_prompts(seed: int) -> Iterator[tuple[str, str]]:
    stubs = list(_function_stubs())
    random.Random(seed).shuffle(stubs)
    for pid, stub in stubs:
        # HumanEval's frame is glued onto the code as EAGLE's question files have it.
        yield pid, HUMANEVAL_FRAME + stub


_NAMES = ("Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kofi", "Lena",
          "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara")
_ITEMS = (("apples", "basket"), ("pencils", "box"), ("cookies", "tray"), ("stickers", "sheet"),
          ("marbles", "bag"), ("eggs", "carton"), ("books", "shelf"), ("cupcakes", "box"), ("seeds", "packet"))


def _math_problem(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    item, unit = rng.choice(_ITEMS)
    n, m, k = rng.randint(3, 12), rng.randint(2, 9), rng.randint(2, 6)
    price, hours, rate = rng.randint(2, 15), rng.randint(2, 8), rng.randint(8, 30)
    pct = rng.choice((10, 20, 25, 30, 40, 50))
    templates = (
        f"{a} has {n} {unit}es of {item} with {m} {item} in each. {a} gives {k} {item} to {b} and "
        f"eats {k - 1}. How many {item} does {a} have left?",
        f"{a} buys {n} {item} at ${price} each and {m} more at ${price + 2} each. {a} pays with a "
        f"${20 * (n + m)} bill. How much change does {a} get?",
        f"{a} earns ${rate} an hour and works {hours} hours a day for {k} days. {a} spends {pct}% of "
        f"the money on rent. How much money does {a} have left?",
        f"A store sells {item} for ${price} each. On Monday it sells {n * 4} {item}, on Tuesday half as "
        f"many, and on Wednesday {m} more than on Tuesday. How much money does the store make in the "
        f"three days?",
        f"{a} is {n + 20} years old. {b} is {k} years younger than half of {a}'s age. How old will "
        f"{b} be in {m} years?",
        f"{a} reads {n * 5} pages on Monday and twice as many on Tuesday. The book has {n * 5 * 3 + m * 10} "
        f"pages. How many pages are left to read?",
        f"A train travels at {rate * 3} miles per hour for {hours} hours, then at {rate * 2} miles per "
        f"hour for {k} hours. How far does the train travel in total?",
        f"{a} and {b} share {n * m * 2} {item}. {a} gets {k} times as many as {b}. How many {item} "
        f"does {b} get?",
        f"A recipe needs {m} cups of flour for {k} dozen cookies. {a} wants to bake {k * n} cookies. "
        f"How many cups of flour does {a} need?",
        f"{a} saves ${price * 3} every week. After {n} weeks {a} spends ${price * 5} on a gift and "
        f"then saves for {m} more weeks. How much has {a} saved now?",
        f"A garden is {n + 4} meters long and {m + 2} meters wide. {a} puts a fence around it and "
        f"fence costs ${price} per meter. How much does the fence cost?",
        f"There are {n * 10} students in a school. {pct}% of them take the bus and {m * 5} walk. The "
        f"rest come by car. How many students come by car?",
    )
    return rng.choice(templates)


def math_prompts(seed: int) -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    misses = 0
    while misses < 1000:  # the templates' space is finite; stop once draws keep repeating
        text = _math_problem(rng)
        if text in seen:
            misses += 1
            continue
        seen.add(text)
        yield f"math/{_digest(text)}", text


PROMPT_SOURCES: dict[str, PromptSource] = {
    source.name: source
    for source in (
        PromptSource("code", "completion requests for the Python standard library's functions", code_prompts),
        PromptSource("math", "multi-step arithmetic word problems from templates", math_prompts),
    )
}
SFT_SOURCES = ("sharegpt", *PROMPT_SOURCES)  # ShareGPT's first user turns come from workloads.corpora.sharegpt
