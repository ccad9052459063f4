"""The target adapter over other architectures than the embedded Llama: tiny random Qwen2
(attention biases), Gemma / Gemma-2 (scaled embeddings, (1 + w) norms, logit soft-capping),
Gemma-3 (sliding and full layers alternating, a rope base per layer type), Mistral (every
layer windowed), Llama-4 (chunked and full layers) and DeepSeek-V3 (latent attention: values
narrower than keys) configs, real modeling code from transformers. Speculative output must equal
transformers' own greedy generate, at batch 2 with prompts of different lengths.

The windows (8 tokens) are far shorter than prompt plus answer, and a test checks that
transformers' own output changes when the window is widened: an adapter that ignored the
window would fail, which a window longer than the text could never show."""

import pytest
import torch

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft
from scylla_impl.target import Target
from scylla_impl.tree import ancestor_mask

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=49152, max_position_embeddings=512)


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True))


def _gemma():
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(**SMALL, head_dim=16))


WINDOW = 8


def _gemma2(window=WINDOW):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**SMALL, head_dim=16, sliding_window=window))


def _gemma3(window=WINDOW):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=window, sliding_window_pattern=2))


def _mistral(window=WINDOW):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=window))


def _llama4(window=WINDOW):
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    # Chunked attention: a token sees only its own block of `window` tokens, on alternate layers.
    return Llama4ForCausalLM(Llama4TextConfig(
        **SMALL, head_dim=16, intermediate_size_mlp=128, num_local_experts=2, attention_chunk_size=window,
        no_rope_layers=[1, 0, 1], layer_types=["chunked_attention", "full_attention", "chunked_attention"]))


def _deepseek_v3():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    return DeepseekV3ForCausalLM(DeepseekV3Config(
        **{**SMALL, "num_key_value_heads": 4}, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
        n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=8, first_k_dense_replace=1))


ARCHITECTURES = {"deepseek_v3": _deepseek_v3, "qwen2": _qwen2, "gemma": _gemma, "gemma2": _gemma2, "gemma3": _gemma3, "mistral": _mistral,
                 "llama4": _llama4}
WINDOWED = {"gemma2", "gemma3", "mistral", "llama4"}
# Random init gives near-uniform logits; a wider embedding spread keeps greedy choices clear of
# float ties. Gemma-2/3 scale embeddings themselves and soft-cap attention: more saturates them
# into repeating one token whatever the context, and the window could not show.
EMBED_SCALE = {"gemma2": 1, "gemma3": 1}
PROMPTS = ["Write a haiku about the sea.",
           "List three prime numbers bigger than one hundred and explain how you checked each of them."]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny_target(request, tmp_path_factory, default_model_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    model = ARCHITECTURES[request.param]()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBED_SCALE.get(request.param, 20))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    target = Target.load(str(folder), dtype="float32")
    target.architecture = request.param
    return target


def _greedy(model, prompts, pad_token_id):
    return [model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, min_new_tokens=24,
                           pad_token_id=pad_token_id)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("draft_spec,tree", [("random:eagle2", (4, 4, 16)), ("oracle", (10, 5, 60))])
def test_speculative_equals_transformers_generate(tiny_target, draft_spec, tree):
    tok = tiny_target.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    want = _greedy(tiny_target.model, prompts, tok.pad_token_id or 0)
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


def _tree_logits(target, prompts):
    """Logits of a 6-node tree (a root with two branches) after the prompts, batch 2."""
    cache = target.new_cache(len(prompts), 128)
    target.prefill(cache, prompts)
    tokens = torch.tensor([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]])
    depths = torch.tensor([[0, 1, 1, 2, 2, 3]] * 2)
    parents = torch.tensor([[-1, 0, 0, 1, 2, 3]] * 2)
    return target.forward_tree(cache, tokens, depths, ancestor_mask(parents, 3)).logits


def test_grouped_attention_without_repeat_equals_transformers_sdpa(tiny_target):
    """The target's SDPA broadcasts the KV heads instead of copying them (2 KV heads for 4
    query heads here): tree logits equal those of transformers' own SDPA."""
    from scylla_impl import gqa_attention

    model = tiny_target.model
    if model.config._attn_implementation != gqa_attention.NAME:
        pytest.skip(f"{tiny_target.architecture} runs eager attention (soft-capping)")
    tok = tiny_target.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    ours = _tree_logits(tiny_target, prompts)
    model.set_attn_implementation("sdpa")
    try:
        theirs = _tree_logits(tiny_target, prompts)
    finally:
        model.set_attn_implementation(gqa_attention.NAME)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_window_changes_transformers_output(tiny_target):
    """The same weights with the window widened past the text answer differently: so the
    test above compares against output that depends on the window."""
    if tiny_target.architecture not in WINDOWED:
        pytest.skip(f"{tiny_target.architecture} has no sliding window")
    wide = ARCHITECTURES[tiny_target.architecture](window=4096)
    wide.load_state_dict(tiny_target.model.state_dict())
    tok = tiny_target.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    assert len(prompts[1]) > 2 * WINDOW
    assert _greedy(wide.eval(), prompts, tok.pad_token_id or 0) != _greedy(tiny_target.model, prompts, tok.pad_token_id or 0)


def test_draft_takes_the_full_attention_rope_base(tiny_target):
    from scylla_impl.drafts.base import DraftConfig

    if tiny_target.architecture != "gemma3":
        pytest.skip("only Gemma-3 keeps a rope base per layer type")
    assert DraftConfig.from_target("eagle2", tiny_target).rope_theta == 1e6


def test_a_layer_the_cache_cannot_serve_is_one_clear_error(tmp_path, default_model_dir):
    """LFM2 mixes convolution layers with attention: its state is not a KV cache."""
    from transformers import AutoTokenizer, Lfm2Config, Lfm2ForCausalLM

    from workloads.errors import ScyllaError

    config = Lfm2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=49152, layer_types=["conv", "full_attention"])
    Lfm2ForCausalLM(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tmp_path)
    with pytest.raises(ScyllaError, match="'conv' layers"):
        Target.load(str(tmp_path), dtype="float32")


def test_static_cache_equals_transformers_generate(tiny_target):
    """The static KV cache that --compile decodes over (whole-capacity buffers, unused slots
    masked, writes by slot index), run eagerly: the same greedy output as transformers, windows
    and chunks included, at batch 2 with prompts of different lengths."""
    tok = tiny_target.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    want = _greedy(tiny_target.model, prompts, tok.pad_token_id or 0)
    draft = load_draft("random:eagle2", tiny_target)
    tiny_target.eos_ids = frozenset()
    tiny_target.static_cache = draft.static_cache = True
    try:
        spec = generate(tiny_target, prompts, draft, DecodeConfig(top_k=4, depth=4, total_tokens=16, max_new_tokens=24))
        ar = generate(tiny_target, prompts, None, DecodeConfig(max_new_tokens=24))
    finally:
        tiny_target.static_cache = False
    assert spec.token_ids == want and ar.token_ids == want


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_that_ignores_the_tree_mask_is_refused_at_load(dtype, monkeypatch, default_model_dir):
    """The embedded target, handed the mask a model that builds its own causal mask would use
    (every earlier slot visible, a draft node's sibling included), is refused at load in fp32
    and in bf16, whose rounding is far smaller than what the sibling changes."""
    from scylla_impl import target as target_module
    from workloads.errors import ScyllaError

    real = target_module.layer_masks

    def by_slot(rules, visible, q_pos, k_pos, dtype):
        q, kv = visible.shape[-2:]
        slot_causal = torch.arange(kv)[None, :] <= (kv - q + torch.arange(q))[:, None]  # [q, kv]
        return real(rules, slot_causal.expand_as(visible), q_pos, k_pos, dtype)

    monkeypatch.setattr(target_module, "layer_masks", by_slot)
    with pytest.raises(ScyllaError, match="scores a draft tree differently"):
        Target.load(str(default_model_dir), dtype=dtype)
