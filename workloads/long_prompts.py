"""Prompts longer than the target's context: refused, or cut in the middle the same way every time.

A sweep on a model with a short context (GPT-2's 1024 positions, OPT's 2048) meets CNN/DM
articles that do not fit. `refuse` (the default) fails such a cell and says why. `truncate`
keeps the first and last halves of the room the context leaves, dropping the middle, as
LongBench does: the head holds the chat template's opening and the start of the request, the
tail the end of the request and the assistant header the model continues from. The room is
the same for every cell of a sweep (the context less the new tokens and TREE_ROOM), so the AR
baseline and every tree score the very same prompt, and the lossless check still holds.
"""

from workloads.errors import ScyllaError

REFUSE, TRUNCATE = LONG_PROMPTS = ("refuse", "truncate")
# Positions kept free past the new tokens for the deepest tree's last step (depth <= TREE_ROOM;
# a deeper tree is refused by the decoder's own context check).
TREE_ROOM = 64
# Below this many prompt tokens a cut keeps too little of either end to be the same request.
MIN_ROOM = 32


def prompt_room(context: int, max_new_tokens: int) -> int:
    """Prompt tokens a `truncate` sweep keeps, at most."""
    room = context - max_new_tokens - TREE_ROOM
    if room < MIN_ROOM:
        raise ScyllaError(f"long_prompts truncate: a context of {context} positions leaves {max(room, 0)} for a prompt "
                          f"after {max_new_tokens} new tokens and {TREE_ROOM} for a tree; lower max_new_tokens")
    return room


def middle_cut(ids: list[int], room: int) -> list[int]:
    """`ids` if they fit `room`, else its first room // 2 and last room - room // 2 tokens."""
    if len(ids) <= room:
        return ids
    head = room // 2
    return ids[:head] + ids[len(ids) - (room - head):]
