"""Published draft layouts in and out, on a tiny random Llama target: checkpoints written by hand
with the reference repositories' key names (SafeAILab/EAGLE cnets1.py for EAGLE-1/2; EAGLE
cnets.py and SpecForge llama3_eagle.py for EAGLE-3) load, compute what the reference
forward computes, decode losslessly, and export and re-import unchanged."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft, new_draft
from scylla_impl.drafts.interop import export_draft
from scylla_impl.target import Target, default_layer_choice
from workloads.errors import ScyllaError

H, HEADS, INTER, LAYERS, VOCAB, DRAFT_VOCAB = 64, 4, 128, 8, 49152, 512


@pytest.fixture(scope="module")
def target(tmp_path_factory, default_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama")
    model = LlamaForCausalLM(LlamaConfig(hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS,
                                         num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=VOCAB,
                                         max_position_embeddings=512))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)  # clear greedy choices, no float ties
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    t = Target.load(str(folder), dtype="float32")
    t.eos_ids = frozenset()
    return t


def llama_json(**extra) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "hidden_size": H, "intermediate_size": INTER,
            "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
            "vocab_size": VOCAB, "rope_theta": 10000.0, "hidden_act": "silu", **extra}


def r(*shape):
    return torch.randn(*shape) * 0.2


def layer_keys(prefix: str, attn_in: int) -> dict:
    return {f"{prefix}.self_attn.q_proj.weight": r(H, attn_in), f"{prefix}.self_attn.k_proj.weight": r(H, attn_in),
            f"{prefix}.self_attn.v_proj.weight": r(H, attn_in), f"{prefix}.self_attn.o_proj.weight": r(H, H),
            f"{prefix}.mlp.gate_proj.weight": r(INTER, H), f"{prefix}.mlp.up_proj.weight": r(INTER, H),
            f"{prefix}.mlp.down_proj.weight": r(H, INTER),
            f"{prefix}.post_attention_layernorm.weight": 1 + r(H)}


def rms(x, w):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def mlp(x, s, p):
    return F.linear(F.silu(F.linear(x, s[f"{p}.mlp.gate_proj.weight"])) * F.linear(x, s[f"{p}.mlp.up_proj.weight"]),
                    s[f"{p}.mlp.down_proj.weight"])


def attend_one(x, s, p):
    """Attention of a single position over itself: softmax is 1, so the output is o_proj(v)."""
    return F.linear(F.linear(x, s[f"{p}.self_attn.v_proj.weight"]), s[f"{p}.self_attn.o_proj.weight"])


def eagle2_reference(s, target, token, hidden):
    """cnets1.py: fc(cat(embed, hidden)), layer 0 without input norm, the target's LM head."""
    x = F.linear(torch.cat([target.embed.weight[token], hidden], -1), s["fc.weight"], s.get("fc.bias"))
    x = x + attend_one(x, s, "layers.0")
    x = x + mlp(rms(x, s["layers.0.post_attention_layernorm.weight"]), s, "layers.0")
    return target.lm_head(x)


def eagle3_reference(s, target, token, features):
    """cnets.py / llama3_eagle.py: attention over cat(input_layernorm(embed), hidden_norm(fc(features)))."""
    x = F.linear(features, s["fc.weight"])
    a = torch.cat([rms(target.embed.weight[token], s["midlayer.input_layernorm.weight"]),
                   rms(x, s["midlayer.hidden_norm.weight"])], -1)
    x = x + attend_one(a, s, "midlayer")
    x = x + mlp(rms(x, s["midlayer.post_attention_layernorm.weight"]), s, "midlayer")
    return F.linear(rms(x, s["norm.weight"]), s["lm_head.weight"])


def first_logprobs(draft, token, features):
    draft.start([[token]], 8)
    logprobs, _ = draft.extend(torch.tensor([[token]]), features[None, None], torch.tensor([1]))
    return logprobs[0]


def assert_lossless(target, draft, text: str, config: DecodeConfig) -> None:
    """Speculative decoding with `draft` emits exactly the AR baseline's 16 tokens."""
    prompts = [target.tokenizer(text)["input_ids"]]
    assert generate(target, prompts, draft, dataclasses.replace(config, max_new_tokens=16)).token_ids == generate(
        target, prompts, None, DecodeConfig(max_new_tokens=16)).token_ids


def eagle2_folder(tmp_path, target, bias: bool):
    torch.manual_seed(1)
    state = {"fc.weight": r(H, 2 * H), **layer_keys("layers.0", H), "embed_tokens.weight": target.embed.weight.clone()}
    if bias:
        state["fc.bias"] = r(H)
    folder = tmp_path / f"eagle2-{bias}"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")  # EAGLE-1/2 releases ship pytorch_model.bin
    (folder / "config.json").write_text(json.dumps(llama_json(**({} if bias else {"bias": False}))))
    return folder, state


def eagle3_folder(tmp_path, target):
    torch.manual_seed(2)
    kept = torch.sort(torch.randperm(VOCAB)[:DRAFT_VOCAB]).values
    state = {"fc.weight": r(H, 3 * H), **layer_keys("midlayer", 2 * H), "midlayer.hidden_norm.weight": 1 + r(H),
             "midlayer.input_layernorm.weight": 1 + r(H), "norm.weight": 1 + r(H), "lm_head.weight": r(DRAFT_VOCAB, H),
             "d2t": kept - torch.arange(DRAFT_VOCAB), "t2d": torch.zeros(VOCAB, dtype=torch.bool).index_fill(0, kept, True)}
    folder = tmp_path / "eagle3"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(llama_json(architectures=["LlamaForCausalLMEagle3"],
                                                              draft_vocab_size=DRAFT_VOCAB, tie_word_embeddings=False)))
    return folder, state, kept


@pytest.mark.parametrize("bias", [True, False])
def test_eagle2_checkpoint_computes_the_reference_forward_and_decodes_losslessly(tmp_path, target, bias):
    folder, state = eagle2_folder(tmp_path, target, bias)
    draft = load_draft(str(folder), target, dtype=torch.float32)  # the reference's precision
    assert draft.config.method == "eagle2" and draft.feature_layers == ()
    token, hidden = 123, torch.randn(H)
    with torch.no_grad():
        want = F.log_softmax(eagle2_reference(state, target, token, hidden).float(), -1)
    torch.testing.assert_close(first_logprobs(draft, token, hidden), want, rtol=1e-4, atol=1e-4)
    assert_lossless(target, draft, "Write a haiku about the sea.", DecodeConfig(top_k=4, depth=4, total_tokens=12))


def test_eagle3_checkpoint_computes_the_reference_forward_exports_and_round_trips(tmp_path, target):
    folder, state, kept = eagle3_folder(tmp_path, target)
    draft = load_draft(str(folder), target, dtype=torch.float32)  # the reference's precision
    assert draft.config.method == "eagle3" and draft.draft_vocab == DRAFT_VOCAB
    assert draft.feature_layers == default_layer_choice(LAYERS) == (2, 4, 5)
    assert torch.equal(draft.draft_token_ids(), kept)  # d2t read as offsets
    token, features = 77, torch.randn(3 * H)
    with torch.no_grad():
        want = F.log_softmax(eagle3_reference(state, target, token, features).float(), -1)
    torch.testing.assert_close(first_logprobs(draft, token, features), want, rtol=1e-4, atol=1e-4)
    assert_lossless(target, draft, "List three prime numbers.", DecodeConfig(top_k=4, depth=3, total_tokens=10))

    out = export_draft(draft, tmp_path / "exported")
    written = load_file(str(out / "model.safetensors"))
    assert set(written) == set(state)  # exactly the reference's keys, as SGLang and vLLM read them
    assert all(torch.equal(written[k], state[k].to(written[k].dtype)) for k in state)
    config_out = json.loads((out / "config.json").read_text())
    assert config_out["architectures"] == ["LlamaForCausalLMEagle3"] and config_out["draft_vocab_size"] == DRAFT_VOCAB
    again = load_draft(str(out), target, dtype=torch.float32)
    torch.testing.assert_close(first_logprobs(again, token, features), want, rtol=1e-4, atol=1e-4)


def test_our_drafts_export_in_the_published_layouts(tmp_path, target):
    eagle2 = new_draft("eagle2", target, seed=3, dtype=torch.float32)
    out = export_draft(eagle2, tmp_path / "e2")
    assert {k for k in load_file(str(out / "model.safetensors"))} >= {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight"}
    token, hidden = 5, torch.randn(H)
    torch.testing.assert_close(first_logprobs(load_draft(str(out), target, dtype=torch.float32), token, hidden),
                               first_logprobs(eagle2, token, hidden))
    with pytest.raises(ScyllaError, match="no published layout holds a draft with method scylla"):
        export_draft(new_draft("scylla", target), tmp_path / "s")
    with pytest.raises(ScyllaError, match="reduced vocabulary"):
        export_draft(new_draft("eagle2", target, draft_vocab=256), tmp_path / "r")


class NotATensor:
    pass


def test_untrusted_and_mismatched_checkpoints_are_clear_errors(tmp_path, target):
    folder, state = eagle2_folder(tmp_path, target, bias=True)
    torch.save({**state, "payload": NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(ScyllaError, match="never unpickled as code"):
        load_draft(str(folder), target)
    folder3, state3, _ = eagle3_folder(tmp_path, target)
    (folder3 / "config.json").write_text(json.dumps(llama_json(vocab_size=32000, draft_vocab_size=DRAFT_VOCAB)))
    with pytest.raises(ScyllaError, match="trained for another target"):
        load_draft(str(folder3), target)
    (folder3 / "config.json").write_text(json.dumps(llama_json(draft_vocab_size=DRAFT_VOCAB,
                                                               rope_scaling={"rope_type": "yarn", "factor": 4.0})))
    with pytest.raises(ScyllaError, match="rope scaling 'yarn' is not supported"):
        load_draft(str(folder3), target)
    save_file({"something.weight": torch.zeros(2)}, str(folder3 / "model.safetensors"))
    (folder3 / "config.json").write_text(json.dumps(llama_json()))
    with pytest.raises(ScyllaError, match="neither an EAGLE-1/2"):
        load_draft(str(folder3), target)


def test_cli_exports_a_published_checkpoint_again(tmp_path, target):
    from click.testing import CliRunner

    from harness.cli import cli

    folder, state, _ = eagle3_folder(tmp_path, target)
    res = CliRunner().invoke(cli, ["models", "export-draft", str(folder), "--target", target.info.name,
                                   "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    assert set(load_file(str(tmp_path / "again" / "model.safetensors"))) == set(state)
    res = CliRunner().invoke(cli, ["models", "export-draft", "lookup", "--target", target.info.name,
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not a trained draft folder" in res.output


def test_llama3_rope_scaling_matches_transformers(tmp_path, target):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from scylla_impl.drafts.layers import inverse_frequencies

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters={"rope_theta": 500000.0, **scaling})
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    got = inverse_frequencies(128, 500000.0, scaling)
    torch.testing.assert_close(got, want.float())
    assert not torch.allclose(got, inverse_frequencies(128, 500000.0, None))  # the scaling does change them
    # a Llama-3.1 EAGLE-3 config (transformers 4 spelling) loads with its scaling
    folder, _, _ = eagle3_folder(tmp_path, target)
    (folder / "config.json").write_text(json.dumps(llama_json(draft_vocab_size=DRAFT_VOCAB, rope_theta=500000.0,
                                                              rope_scaling=scaling)))
    draft = load_draft(str(folder), target)
    assert draft.config.rope_scaling == scaling and draft.config.rope_theta == 500000.0
    assert json.loads((export_draft(draft, tmp_path / "x") / "config.json").read_text())["rope_scaling"] == scaling


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_reads_rotary_rows_with_the_bits_a_forward_computes(target, scaling, dtype):
    from scylla_impl.drafts.layers import rotary

    draft = new_draft("scylla", target)
    draft.config = dataclasses.replace(draft.config, rope_scaling=scaling, rope_theta=500000.0)
    draft.to(dtype).start([[1, 2, 3]] * 2, capacity=300)
    positions = torch.tensor([[0, 1, 2, 7], [150, 151, 298, 299]])  # [b, q]
    want = rotary(positions, draft.config.head_dim, 500000.0, dtype, scaling)  # each [b, 1, q, head_dim]
    got = [table[positions][:, None] for table in draft._rope_table]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
