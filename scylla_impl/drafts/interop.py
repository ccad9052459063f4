"""Published draft checkpoints in and out: EAGLE-1/2 (SafeAILab/EAGLE) and EAGLE-3 (EAGLE, SpecForge).

Layouts, as the reference code writes and reads them (SafeAILab/EAGLE eagle/model/cnets1.py
and cnets.py, SpecForge specforge/modeling/draft/llama3_eagle.py, and the EAGLE-3 loaders of
SGLang and vLLM):

- EAGLE-1/2: `fc` (2h -> h over cat(embedding, feature); a bias unless config.json says
  "bias": false), `layers.0.*` with no input norm on layer 0, no final norm and no head (the
  target's LM head reads the draft's output), an optional frozen copy of the target's
  `embed_tokens`. The feature is the target's last hidden state after its final norm.
  Those are exactly this project's EAGLE-2 draft and key names.
- EAGLE-3: `fc` (3T -> h, no bias) over the inputs of target layers 2, L//2 and L-3 (low to
  high), `midlayer.*` whose attention reads cat(input_layernorm(embedding),
  hidden_norm(fc output)), `norm`, `lm_head` over `draft_vocab_size` tokens, `d2t` (offsets:
  target id = draft id + d2t[draft id]) and `t2d` (a mask over the target vocabulary).
  This project's EAGLE-3 draft names `midlayer.input_layernorm` `embed_norm`,
  `midlayer.hidden_norm` `hidden_norm` and `midlayer.*` `layers.0.*`.

Weights load from model.safetensors, or from pytorch_model.bin with
torch.load(weights_only=True): a checkpoint is never unpickled as code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from scylla_impl.drafts.base import DRAFT_FORMAT, Draft, DraftConfig
from scylla_impl.methods import BY_NAME
from workloads.errors import ScyllaError
from workloads.files import atomic_write, atomic_write_bytes

EAGLE = "eagle"  # EAGLE-1/2 layout
EAGLE3 = "eagle3"  # EAGLE-3 / SpecForge layout
LAYOUTS = (EAGLE, EAGLE3)
# Our EAGLE-3 names for the reference's first-layer norms.
_EAGLE3_NAMES = {"midlayer.input_layernorm.weight": "embed_norm.weight", "midlayer.hidden_norm.weight": "hidden_norm.weight"}
_NOT_OURS = ("embed_tokens.weight",)  # the target's embedding: the draft reads the target's own


def is_foreign(folder: Path) -> bool:
    """A folder with a draft config.json that this project did not write (no `method`)."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and "method" not in raw


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types for torn files
            raise ScyllaError(f"draft '{folder}': model.safetensors cannot be read ({str(err).splitlines()[0]})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a pickle that is not plain tensors is refused here
            raise ScyllaError(f"draft '{folder}': pytorch_model.bin is not a plain tensor file "
                              f"({str(err).splitlines()[0]}); it is never unpickled as code") from None
    if any(folder.glob("*.index.json")):
        raise ScyllaError(f"draft '{folder}': sharded weights are not supported for drafts; merge them into one "
                          "model.safetensors")
    raise ScyllaError(f"draft '{folder}': no model.safetensors or pytorch_model.bin")


def layout_of(state: dict[str, torch.Tensor], folder: Path) -> str:
    if any(k.startswith("midlayer.") for k in state):
        return EAGLE3
    if "fc.weight" in state and any(k.startswith("layers.0.") for k in state):
        return EAGLE
    raise ScyllaError(f"draft '{folder}': neither an EAGLE-1/2 (fc, layers.0.*) nor an EAGLE-3 (fc, midlayer.*) "
                      f"checkpoint; keys start {sorted(state)[:4]}")


LLAMA3_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope(raw: dict, folder: Path) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a config that writes them the transformers 4 or 5 way."""
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or rope
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind == "llama3" and all(k in scaling for k in LLAMA3_SCALING):
        return theta, {"rope_type": "llama3", **{k: float(scaling[k]) for k in LLAMA3_SCALING}}
    raise ScyllaError(f"draft '{folder}': rope scaling '{kind}' is not supported by this engine's draft layer "
                      "(default and llama3 are)")


def _feature_layers(raw: dict, target) -> list[int]:
    """EAGLE-3's target layers, as indices of the layers whose *inputs* feed fc.

    vLLM reads a top-level `eagle_aux_hidden_state_layer_ids` as input indices; SGLang reads
    `eagle_config.eagle_aux_hidden_state_layer_ids` as output indices (input = output + 1)."""
    from scylla_impl.target import default_layer_choice

    if raw.get("eagle_aux_hidden_state_layer_ids"):
        return [int(i) for i in raw["eagle_aux_hidden_state_layer_ids"]]
    nested = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if nested:
        return [int(i) + 1 for i in nested]
    return list(default_layer_choice(target.info.num_layers))


def import_draft(folder: Path, target) -> Draft:
    """An EAGLE-1/2 or EAGLE-3 checkpoint folder as this project's draft for `target`, on the
    CPU in fp32 (load_draft places it)."""
    raw = json.loads((folder / "config.json").read_text())
    made_for = (raw.get("scylla_bench") or {}).get("target_fingerprint")
    if made_for and made_for != target.info.fingerprint:
        raise ScyllaError(f"draft '{folder}' was exported for target '{raw['scylla_bench'].get('target_name')}' "
                          f"(fingerprint {made_for}), not '{target.info.name}' ({target.info.fingerprint})")
    state = read_state(folder)
    layout = layout_of(state, folder)
    h = int(raw["hidden_size"])
    heads = int(raw["num_attention_heads"])
    vocab = int(raw.get("vocab_size", target.info.vocab_size))
    if vocab != target.info.vocab_size:
        raise ScyllaError(f"draft '{folder}' predicts over {vocab} tokens; target '{target.info.name}' has "
                          f"{target.info.vocab_size}: it was trained for another target")
    layers = int(raw.get("num_hidden_layers", 1))
    if layers != 1:
        raise ScyllaError(f"draft '{folder}' has {layers} decoder layers; EAGLE checkpoints with more than one are "
                          "not supported")
    t_hidden = int(raw.get("target_hidden_size") or h)
    if t_hidden != target.info.hidden_size or (layout == EAGLE and h != target.info.hidden_size):
        raise ScyllaError(f"draft '{folder}' reads features of width {t_hidden}; target '{target.info.name}' has "
                          f"hidden size {target.info.hidden_size}: it was trained for another target")
    if t_hidden != h:
        raise ScyllaError(f"draft '{folder}': a draft narrower than its target (hidden {h}, target {t_hidden}) is "
                          "not supported")
    rope = _rope(raw, folder)
    config = DraftConfig(
        method="eagle2" if layout == EAGLE else "eagle3", hidden_size=h, num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads), head_dim=int(raw.get("head_dim") or h // heads),
        intermediate_size=int(raw["intermediate_size"]), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope[0], rope_scaling=rope[1], vocab_size=vocab,
        draft_vocab_size=int(raw.get("draft_vocab_size") or 0) if layout == EAGLE3 else 0,
        feature_layers=_feature_layers(raw, target) if layout == EAGLE3 else [],
        target_name=target.info.name, target_hidden_size=t_hidden, target_fingerprint=target.info.fingerprint,
    )
    if layout == EAGLE3 and not config.draft_vocab_size:
        config.draft_vocab_size = int(state["lm_head.weight"].shape[0])
    draft = BY_NAME[config.method].draft_class(config, target)
    mine = _to_ours(state, layout, draft, folder)
    missing, unexpected = draft.load_state_dict(mine, strict=False)
    if missing or unexpected:
        raise ScyllaError(f"draft '{folder}' does not match the {layout} layout: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    draft._vocab_changed()
    draft.checkpoint = str(folder)
    draft.weights_hash = _hash(state)
    return draft


def _to_ours(state: dict[str, torch.Tensor], layout: str, draft: Draft, folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in _NOT_OURS:
            continue
        if layout == EAGLE3:
            key = _EAGLE3_NAMES.get(key, key.replace("midlayer.", "layers.0.", 1))
        out[key] = value
    expected = draft.state_dict()
    if "fc.bias" in expected and "fc.bias" not in out:  # "bias": false drafts: a zero bias is no bias
        out["fc.bias"] = torch.zeros_like(expected["fc.bias"])
    if layout == EAGLE3 and "d2t" not in out:  # a full-vocabulary EAGLE-3 draft may leave the maps out
        out["d2t"] = torch.zeros_like(expected["d2t"])
        out["t2d"] = torch.ones_like(expected["t2d"])
    for key, value in out.items():
        if key in expected and value.shape != expected[key].shape:
            raise ScyllaError(f"draft '{folder}': {key} has shape {list(value.shape)}, the config gives "
                              f"{list(expected[key].shape)}")
    if "t2d" in out:
        out["t2d"] = out["t2d"].bool()
        out["d2t"] = out["d2t"].long()
    return out


def _hash(state: dict[str, torch.Tensor]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def export_draft(draft: Draft, folder: str | Path) -> Path:
    """Write `draft` in the reference layout of its method: EAGLE-3 / SpecForge for eagle3 drafts
    (what SGLang and vLLM serve), EAGLE-1/2 for full-vocabulary eagle2 drafts."""
    folder = Path(folder)
    c = draft.config
    state = {k: v.detach().contiguous().cpu() for k, v in draft.state_dict().items()}
    base = {"model_type": "llama", "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
            "num_hidden_layers": 1, "rms_norm_eps": c.rms_norm_eps, "hidden_act": "silu", "rope_theta": c.rope_theta,
            "vocab_size": c.vocab_size, "max_position_embeddings": 4096, "tie_word_embeddings": False,
            **({"rope_scaling": c.rope_scaling} if c.rope_scaling else {}),
            "torch_dtype": str(next(draft.parameters()).dtype).removeprefix("torch.")}
    from scylla_impl.target import default_layer_choice

    if c.method == "eagle3":
        ours_to_theirs = {v: k for k, v in _EAGLE3_NAMES.items()}
        state = {ours_to_theirs.get(k, k.replace("layers.0.", "midlayer.", 1)): v for k, v in state.items()}
        config = {**base, "architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": c.draft_vocab_size}
        if list(c.feature_layers) != list(default_layer_choice(c.feature_layers[-1] + 3)):
            config["eagle_aux_hidden_state_layer_ids"] = list(c.feature_layers)  # vLLM: layer-input indices
            config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in c.feature_layers]}  # SGLang
    elif c.method == "eagle2" and not c.draft_vocab_size:
        config = {**base, "architectures": ["LlamaForCausalLM"], "bias": True}
    else:
        why = "a reduced vocabulary" if c.method == "eagle2" else f"method {c.method}"
        raise ScyllaError(f"no published layout holds a draft with {why}: EAGLE-3 drafts export in the EAGLE-3 / "
                          "SpecForge layout, full-vocabulary EAGLE-2 drafts in EAGLE-1/2's")
    if c.num_layers != 1:
        raise ScyllaError(f"the {c.method} layouts hold one decoder layer; this draft has {c.num_layers}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config["scylla_bench"] = {"target_name": c.target_name, "target_fingerprint": c.target_fingerprint,
                              "format": DRAFT_FORMAT}
    atomic_write_bytes(json.dumps(config, indent=2).encode(), folder / "config.json")
    return folder
