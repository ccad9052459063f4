"""Prompt formatting through the target tokenizer's own chat template.

Acceptance rates move with the exact prompt text, so the template and system prompt used are
identified by `template_hash` and belong in every result: two runs compare honestly only
when their hashes match. A tokenizer without a chat template (a base GPT-2 style model) gets
the plain FALLBACK_TEMPLATE below, which the hash then covers, so it is never silent.
"""

import hashlib
import json
from collections.abc import Sequence

from workloads.errors import ScyllaError
from workloads.prompt import Prompt

# Plain "User:/Assistant:" turns, for tokenizers that bring no template of their own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def template_text(tokenizer) -> str:
    """The chat template `render_chat` uses for this tokenizer."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one formats chat
        template = template.get("default")
    return template or FALLBACK_TEMPLATE


def uses_fallback_template(tokenizer) -> bool:
    return template_text(tokenizer) == FALLBACK_TEMPLATE


def template_hash(tokenizer, system_prompt: str | None = None) -> str:
    """Short sha256 of the template text and the system prompt: equal hashes, equal formatting."""
    digest = hashlib.sha256(template_text(tokenizer).encode())
    # JSON keeps None (the template's default system prompt) apart from "" (an empty one).
    digest.update(b"\0" + json.dumps(system_prompt).encode())
    return digest.hexdigest()[:16]


def with_system(messages: Sequence[dict], system_prompt: str | None) -> list[dict]:
    messages = [dict(m) for m in messages]
    if system_prompt is None:
        return messages  # the template's own default system prompt (if any) applies
    if messages and messages[0].get("role") == "system":
        raise ScyllaError("a system prompt was given twice: as system_prompt and as the first message")
    return [{"role": "system", "content": system_prompt}, *messages]


def render_chat(tokenizer, messages: list[dict], system_prompt: str | None = None,
                add_generation_prompt: bool = True) -> str:
    """The text the target sees for `messages` ({"role", "content"} dicts)."""
    for m in with_system(messages, system_prompt):
        if isinstance(m.get("content"), str):
            check_text(m["content"], f"the {m.get('role', 'chat')} message")
    try:
        return tokenizer.apply_chat_template(
            with_system(messages, system_prompt),
            chat_template=template_text(tokenizer),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except ScyllaError:
        raise
    except Exception as err:  # jinja errors: a template that rejects this role order, etc.
        raise ScyllaError(f"the chat template could not format these messages: {err}") from None


def check_text(text: str, what: str) -> None:
    """Text a tokenizer can take: a terminal or file in another encoding hands Python bytes it keeps
    as lone surrogates, which the tokenizer rejects with a TypeError deep inside."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ScyllaError(f"{what} is not UTF-8 text (character {err.start}): give it in UTF-8") from None


def prompt_messages(prompt: Prompt, turn: int = 0, previous_answers: Sequence[str] = ()) -> list[dict]:
    """The conversation up to user turn `turn`: EAGLE asks MT-bench's second turn after the
    model's own first answer, so earlier turns are followed by the answers given to them."""
    if not 0 <= turn < len(prompt.turns):
        raise ScyllaError(f"prompt {prompt.dataset}/{prompt.id} has {len(prompt.turns)} turn(s); no turn {turn}")
    if len(previous_answers) < turn:
        raise ScyllaError(f"turn {turn} of {prompt.dataset}/{prompt.id} needs the model's answers to the "
                          f"{turn} earlier turn(s); got {len(previous_answers)}")
    messages: list[dict] = []
    for i in range(turn):
        messages += [{"role": "user", "content": prompt.turns[i]},
                     {"role": "assistant", "content": previous_answers[i]}]
    messages.append({"role": "user", "content": prompt.turns[turn]})
    return messages


def prompt_text(tokenizer, prompt: Prompt, system_prompt: str | None = None, turn: int = 0,
                previous_answers: Sequence[str] = ()) -> str:
    return render_chat(tokenizer, prompt_messages(prompt, turn, previous_answers), system_prompt)


def prompt_token_ids(tokenizer, prompt: Prompt, system_prompt: str | None = None, turn: int = 0,
                     previous_answers: Sequence[str] = ()) -> list[int]:
    """Token ids of the rendered prompt, ending with the assistant header the model continues."""
    text = prompt_text(tokenizer, prompt, system_prompt, turn, previous_answers)
    # The template already wrote any BOS it wants; adding special tokens again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_conversation(tokenizer, messages: Sequence[dict],
                          system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and a 0/1 mask that is 1 exactly on assistant turns
    (their content and the template's end-of-turn marker): the tokens SFT learns to produce."""
    messages = with_system(messages, system_prompt)
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = _assistant_spans(tokenizer, messages, full)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        starts = [start for start, _ in enc["offset_mapping"]]
        mask = [0] * len(ids)
        # Spans and token starts are both ascending: one merge-like pass marks the tokens.
        span = 0
        for i, start in enumerate(starts):
            while span < len(spans) and start >= spans[span][1]:
                span += 1
            if span == len(spans):
                break
            mask[i] = int(start >= spans[span][0])
        return ids, mask
    # Slow tokenizers give no offsets: tokenize the pieces between span edges separately.
    ids, mask, cursor = [], [], 0
    for start, end in spans + [(len(full), len(full))]:
        for piece, flag in ((full[cursor:start], 0), (full[start:end], 1)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                mask += [flag] * len(piece_ids)
        cursor = end
    return ids, mask


def _assistant_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in `full`.

    Most templates render a conversation's prefix as a prefix of the whole, so a turn spans
    from the end of "everything before it + assistant header" to the end of "everything up to
    and including it". Templates that rewrite earlier turns (e.g. dropping old reasoning)
    break that; for them the turn's content is searched for instead.
    """
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        # (A conversation that opens with the assistant has no "before" to render.)
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True) if i else None
        through = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if before is not None and full.startswith(through) and through.startswith(before) and len(before) >= cursor:
            spans.append((len(before), len(through)))
            cursor = len(through)
            continue
        found = full.find(message["content"], cursor)
        if found < 0:
            raise ScyllaError("the chat template does not reproduce an assistant turn verbatim; cannot mask it")
        spans.append((found, found + len(message["content"])))
        cursor = found + len(message["content"])
    return spans
