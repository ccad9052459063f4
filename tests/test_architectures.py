"""The target adapter over other architectures than the embedded Llama: tiny random Qwen2
(attention biases) and Gemma / Gemma-2 (scaled embeddings, (1 + w) norms, logit soft-capping)
configs, real modeling code from transformers. Speculative output must equal transformers'
own greedy generate, at batch 2 with prompts of different lengths."""

import pytest
import torch

from scylla_impl.decode import DecodeConfig, generate
from scylla_impl.drafts import load_draft
from scylla_impl.target import Target

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=49152, max_position_embeddings=512)


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True))


def _gemma():
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(**SMALL, head_dim=16))


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # Sliding window shorter than the prompts, so the local layers really mask something.
    return Gemma2ForCausalLM(Gemma2Config(**SMALL, head_dim=16, sliding_window=24))


ARCHITECTURES = {"qwen2": _qwen2, "gemma": _gemma, "gemma2": _gemma2}
PROMPTS = ["Write a haiku about the sea.",
           "List three prime numbers bigger than one hundred and explain how you checked each of them."]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny_target(request, tmp_path_factory, default_model_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    model = ARCHITECTURES[request.param]()
    # Random init gives near-uniform logits; a wider spread keeps greedy choices clear of float ties.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return Target.load(str(folder), dtype="float32")


@pytest.mark.parametrize("draft_spec,tree", [("random:eagle2", (4, 4, 16)), ("oracle", (10, 5, 60))])
def test_speculative_equals_transformers_generate(tiny_target, draft_spec, tree):
    tok = tiny_target.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    want = []
    for p in prompts:
        ids = tiny_target.model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, min_new_tokens=24,
                                         pad_token_id=tok.pad_token_id or 0)[0, len(p):].tolist()
        want.append(ids)
    k, d, n = tree
    config = DecodeConfig(top_k=k, depth=d, total_tokens=n, max_new_tokens=24)
    draft = load_draft(draft_spec, tiny_target)
    # No EOS cut: the random target may emit one anywhere, and the comparison wants all 24 tokens.
    tiny_target.eos_ids = frozenset()
    result = generate(tiny_target, prompts, draft, config)
    assert result.token_ids == want
    ar = generate(tiny_target, prompts, None, DecodeConfig(max_new_tokens=24))
    assert ar.token_ids == want
    if draft_spec == "oracle":
        assert result.stats.tau > 2  # the tree really was accepted in several tokens per step
