"""Strict JSON Lines parsing: a bad line is reported by file and line number, never skipped.

Silently dropping a corrupt record would change a benchmark's prompt set without anyone
noticing, so every defect is a ScyllaError that points at the exact line to fix.
"""

import json
from collections.abc import Iterator

from workloads.errors import ScyllaError


def iter_jsonl(text: str, where: str) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line of `text`; `where` names the file."""
    for number, line in enumerate(lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScyllaError(f"{where}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise ScyllaError(f"{where}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ScyllaError(f"{where}: not UTF-8 text (byte {err.start})") from None


def lines(text: str) -> list[str]:
    """Split on newlines only. str.splitlines would also split inside records on U+2028, U+0085
    and other separators that real data contains, and misnumber every line after them."""
    return [line.removesuffix("\r") for line in text.split("\n")]
