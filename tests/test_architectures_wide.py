"""The target adapter across transformers' causal LMs, about a second each.

Tiny random configs of real architectures, real modeling code: greedy AR and speculative
decoding (a random EAGLE-2 draft, then the oracle draft, whose tree is always accepted) must
equal transformers' own `generate` token for token, or the load must refuse the model with one
clear error. tests/test_architectures.py covers the windowed and chunked ones in depth.
"""

import pytest
import torch

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft
from scylla_impl.target import Target
from workloads.errors import ScyllaError

DENSE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=512)
MLA = dict(DENSE, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
           n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
           v_head_dim=8, first_k_dense_replace=1)
GPT = dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)

# model_type -> config fields beside vocab_size (pad_token_id where the default lies past it).
MATCHING = {
    "apertus": dict(DENSE, pad_token_id=0),
    "arcee": dict(DENSE, pad_token_id=0),
    "biogpt": dict(DENSE, num_key_value_heads=None),
    "bitnet": dict(DENSE, pad_token_id=0),
    "codegen": dict(GPT, rotary_dim=8, n_ctx=512),
    "cohere": dict(DENSE, pad_token_id=0),
    "cohere2": dict(DENSE, pad_token_id=0, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    "deepseek_v2": MLA,
    "deepseek_v3": MLA,
    "ernie4_5": dict(DENSE, head_dim=16, pad_token_id=0),
    "exaone4": dict(DENSE, head_dim=16),
    "falcon": dict(DENSE, num_key_value_heads=None, new_decoder_architecture=True, num_kv_heads=2),
    "gemma2": dict(DENSE, head_dim=16, sliding_window=8),
    "gemma3_text": dict(DENSE, head_dim=16),
    # Gemma-3 4B and up: a multimodal model that AutoModelForCausalLM loads whole, its language
    # model's settings in a text config.
    "gemma3": dict(text_config=dict(DENSE, head_dim=16, vocab_size=49152), mm_tokens_per_image=4,
                   vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)),
    "glm": dict(DENSE, head_dim=16, pad_token_id=0),
    "glm4": dict(DENSE, head_dim=16, pad_token_id=0),
    "gpt2": GPT,
    "gpt_bigcode": GPT,
    "gpt_neox": dict(DENSE, num_key_value_heads=None),
    "gpt_oss": dict(DENSE, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"]),
    "gptj": dict(GPT, rotary_dim=8),
    "granite": DENSE,
    "granitemoe": dict(DENSE, num_local_experts=4, num_experts_per_tok=2),
    "helium": dict(DENSE, head_dim=16, pad_token_id=0),
    "hunyuan_v1_dense": dict(DENSE, head_dim=16, pad_token_id=0),
    "mixtral": dict(DENSE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    "nemotron": dict(DENSE, pad_token_id=0),
    "olmo": dict(DENSE, pad_token_id=0),
    "olmo2": dict(DENSE, pad_token_id=0),
    "olmoe": dict(DENSE, num_experts=4, num_experts_per_tok=2, pad_token_id=0),
    "opt": dict(DENSE, num_key_value_heads=None, ffn_dim=128, word_embed_proj_dim=64, pad_token_id=1),
    "persimmon": dict(DENSE, num_key_value_heads=None),
    "phi": dict(DENSE, num_key_value_heads=None),
    "phi3": dict(DENSE, pad_token_id=0),
    "phimoe": dict(DENSE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    "qwen2_moe": dict(DENSE, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
                      num_experts_per_tok=2),
    "qwen3": dict(DENSE, head_dim=16),
    "qwen3_moe": dict(DENSE, head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2),
    "seed_oss": dict(DENSE, head_dim=16, pad_token_id=0),
    "smollm3": dict(DENSE, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "stablelm": DENSE,
    "starcoder2": dict(DENSE, sliding_window=None),
    "xglm": dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, max_position_embeddings=512),
}
REFUSED = {
    # ALiBi built from a 2-D padding mask: the model raises on the adapter's 4-D tree mask.
    "bloom": (dict(hidden_size=64, n_layer=2, n_head=4), "BloomForCausalLM cannot score a draft tree"),
    # ALiBi over cache slots, not positions: a node's sibling occupies a slot, so the node's
    # logits move (3e-3 of their spread in fp32) and speculation would change the output.
    "mpt": (dict(d_model=64, n_layers=2, n_heads=4, max_seq_len=512), "MptForCausalLM scores a draft tree differently"),
    "mamba": (dict(hidden_size=64, num_hidden_layers=2, state_size=8), "'linear_attention' layers"),
    "jamba": (dict(DENSE, num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
                   expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=8, pad_token_id=0),
              "'linear_attention' layers"),
    "falcon_h1": (dict(DENSE, head_dim=16, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                       pad_token_id=0), "'hybrid' layers"),
    "qwen3_next": (dict(DENSE, head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                        linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        shared_expert_intermediate_size=32), "'linear_attention' layers"),
}
PROMPTS = ["Write a haiku about the sea.", "List three prime numbers bigger than one hundred and explain."]


def _save(model_type: str, fields: dict, folder, default_model_dir) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    vocab = {} if "text_config" in fields else {"vocab_size": 49152}
    config = AutoConfig.for_model(model_type, **vocab, **{k: v for k, v in fields.items() if v is not None})
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a wider embedding spread keeps greedy choices clear of float ties
        model.get_input_embeddings().weight.mul_(20)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("model_type", sorted(MATCHING))
def test_decoding_equals_transformers_generate(model_type, tmp_path, default_model_dir):
    target = Target.load(_save(model_type, MATCHING[model_type], tmp_path, default_model_dir), dtype="float32")
    target.eos_ids = frozenset()  # the random model may emit one anywhere; compare all 16 tokens
    prompts = [target.tokenizer(p)["input_ids"] for p in PROMPTS]
    want = [target.model.generate(torch.tensor([p]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                  pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    tree = DecodeConfig(top_k=4, depth=4, total_tokens=16, max_new_tokens=16)
    assert generate(target, prompts, None, DecodeConfig(max_new_tokens=16)).token_ids == want
    assert generate(target, prompts, load_draft("random:eagle2", target), tree).token_ids == want
    oracle = generate(target, prompts, load_draft("oracle", target), tree)
    assert oracle.token_ids == want and oracle.stats.tau > 2


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_unsupported_architectures_are_refused_at_load(model_type, tmp_path, default_model_dir):
    fields, message = REFUSED[model_type]
    folder = _save(model_type, fields, tmp_path, default_model_dir)
    with pytest.raises(ScyllaError, match=message):
        Target.load(folder, dtype="float32")


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)


def test_an_architecture_that_fails_on_a_tree_is_one_clear_error(tmp_path, default_model_dir):
    """Bloom raises inside its own code on a tree: `scylla generate` says so in one line, exit 1."""
    folder = _save("bloom", REFUSED["bloom"][0], tmp_path, default_model_dir)
    run = _cli("generate", "--target", folder, "--prompt", "hi", "--method", "ar", "--dtype", "float32",
               "--max-new-tokens", "2")
    assert run.returncode == 1, run.stderr
    assert "BloomForCausalLM cannot score a draft tree" in run.stderr and "not supported" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_prompt_past_the_models_positions_is_one_clear_error(tmp_path, default_model_dir):
    """GPT-2 has an embedding per position (512 here) and none past them: a longer decode would
    fail mid-run inside the model. `scylla generate` refuses it first, in one line, exit 1."""
    folder = _save("gpt2", GPT, tmp_path, default_model_dir)
    run = _cli("generate", "--target", folder, "--dtype", "float32", "--prompt", " ".join(["word"] * 600),
               "--draft", "random:eagle2", "--max-new-tokens", "8")
    assert run.returncode == 1, run.stderr
    assert "new tokens + a depth-5 tree needs" in run.stderr and "takes 512" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_multimodal_targets_step_reads_its_language_model_only(tmp_path, default_model_dir):
    """The roofline prices a step by the bytes it reads: Gemma-3's vision tower and projector are
    loaded with the model but never read while decoding text."""
    from roofline.knee import ModelStats

    target = Target.load(_save("gemma3", MATCHING["gemma3"], tmp_path, default_model_dir), dtype="float32")
    model = target.model
    unique = {p.data_ptr(): p for p in model.parameters()}.values()
    vision = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    assert vision
    stats = ModelStats.of(target)
    assert stats.weight_bytes == sum(p.numel() * 4 for p in unique) - sum(p.numel() * 4 for p in vision)
    assert stats.num_layers == 2 and stats.q_dim == 4 * 16 and stats.kv_dim == 2 * 16


def test_a_scaled_rotary_embedding_lengthens_the_context(tmp_path, default_model_dir):
    """Qwen2 stating 512 positions with YaRN x4 switched on takes 2048: a 600-token prompt is
    decoded, speculatively, as transformers decodes it."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    target = Target.load(_save("qwen2", dict(DENSE, rope_scaling=yarn), tmp_path, default_model_dir), dtype="float32")
    assert target.info.context == 2048
    target.eos_ids = frozenset()
    prompt = target.tokenizer(" ".join(["word"] * 600))["input_ids"]
    assert len(prompt) > 512
    want = target.model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                 pad_token_id=0)[0, len(prompt):].tolist()
    tree = DecodeConfig(top_k=4, depth=3, total_tokens=8, max_new_tokens=8)
    assert generate(target, [prompt], load_draft("random:eagle2", target), tree).token_ids == [want]
