"""Chat formatting with the real embedded tokenizer (SmolLM2's ChatML template)."""

import pytest

from workloads import Prompt, ScyllaError
from workloads.chat import (
    FALLBACK_TEMPLATE,
    prompt_messages,
    prompt_token_ids,
    render_chat,
    template_hash,
    tokenize_conversation,
    uses_fallback_template,
)

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture
def bare_tokenizer(default_model_dir):
    """The same tokenizer with its chat template removed, like a base GPT-2 style model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    tok.chat_template = None
    return tok


MT = Prompt("81", "writing", ("Write a haiku about rain.", "Now make it about snow."), None, "mt_bench")


def test_render_uses_the_tokenizers_template(tokenizer):
    text = render_chat(tokenizer, [{"role": "user", "content": "Hi"}])
    assert text == SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    no_gen = render_chat(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert no_gen == SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n"


def test_system_prompt_replaces_the_default(tokenizer):
    text = render_chat(tokenizer, [{"role": "user", "content": "Hi"}], system_prompt="Be brief.")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    with pytest.raises(ScyllaError, match="system prompt was given twice"):
        render_chat(tokenizer, [{"role": "system", "content": "a"}], system_prompt="b")


def test_mt_bench_second_turn_follows_the_models_own_answer(tokenizer):
    first = prompt_token_ids(tokenizer, MT, turn=0)
    second = prompt_token_ids(tokenizer, MT, turn=1, previous_answers=["Drops on the tin roof"])
    text = tokenizer.decode(second)
    assert text == (SMOL_SYSTEM + "<|im_start|>user\nWrite a haiku about rain.<|im_end|>\n"
                    "<|im_start|>assistant\nDrops on the tin roof<|im_end|>\n"
                    "<|im_start|>user\nNow make it about snow.<|im_end|>\n<|im_start|>assistant\n")
    assert second[: len(first)] == first  # turn 2's prompt extends turn 1's prompt
    assert tokenizer.decode(first[-4:]) == "<|im_start|>assistant\n"
    with pytest.raises(ScyllaError, match="needs the model's answers"):
        prompt_token_ids(tokenizer, MT, turn=1)
    with pytest.raises(ScyllaError, match="no turn 2"):
        prompt_messages(MT, turn=2, previous_answers=["a", "b"])


def test_token_ids_have_no_doubled_bos(tokenizer):
    ids = prompt_token_ids(tokenizer, MT)
    assert ids == list(tokenizer(render_chat(tokenizer, prompt_messages(MT)), add_special_tokens=False)["input_ids"])
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]


def test_template_hash_covers_template_and_system_prompt(tokenizer, bare_tokenizer):
    h = template_hash(tokenizer, None)
    assert len(h) == 16 and h == template_hash(tokenizer, None)
    assert h != template_hash(tokenizer, "Be brief.")
    assert h != template_hash(bare_tokenizer, None)
    # An empty system prompt renders differently from the template's default one.
    assert template_hash(tokenizer, "") != h


def test_tokenizer_without_template_gets_the_visible_fallback(bare_tokenizer):
    assert uses_fallback_template(bare_tokenizer)
    text = render_chat(bare_tokenizer, prompt_messages(MT, 1, ["Rain."]), system_prompt="Be brief.")
    assert text == ("Be brief.\n\nUser: Write a haiku about rain.\n\nAssistant: Rain.<|im_end|>\n\n"
                    "User: Now make it about snow.\n\nAssistant:")
    assert "User:" in FALLBACK_TEMPLATE


CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, because 3+3=6."},
]


def test_conversation_mask_is_one_exactly_on_assistant_turns(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, CONVERSATION)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert tokenizer.decode(ids) == render_chat(tokenizer, CONVERSATION, add_generation_prompt=False)
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "4.<|im_end|>\n6, because 3+3=6.<|im_end|>\n"
    masked_out = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert masked_out == (SMOL_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
                          "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")


def test_conversation_mask_with_fallback_template(bare_tokenizer):
    ids, mask = tokenize_conversation(bare_tokenizer, CONVERSATION)
    trained = bare_tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == " 4.<|im_end|>\n\n 6, because 3+3=6.<|im_end|>\n\n"
