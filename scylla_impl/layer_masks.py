"""What each attention layer type of a target may see, on top of the tree mask.

transformers builds sliding-window and chunked masks itself only from a 2-D padding mask;
a ready 4-D mask (the adapter's tree mask) reaches every layer unchanged. Left alone, the
tree mask would switch a Gemma-3 or Mistral model's window off and change its output past
the window. So the adapter applies each layer type's rule itself, from absolute positions,
and hands the model one mask per layer type where its layers mix types.
"""

import inspect
from dataclasses import dataclass

import torch

from workloads.errors import ScyllaError

FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"


@dataclass(frozen=True)
class LayerRule:
    kind: str  # FULL, SLIDING or CHUNKED
    size: int = 0  # the window (SLIDING) or chunk (CHUNKED) length in tokens

    def allows(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """bool [b, q, kv]: may the query at q_pos [b, q] see the key at k_pos [b, kv]?
        None where the rule adds nothing to causality. Matches transformers' overlays:
        a window of W keeps q - k < W; a chunk keeps q and k in the same block of `size`."""
        if self.kind == SLIDING:
            return (q_pos[:, :, None] - k_pos[:, None, :]) < self.size
        if self.kind == CHUNKED:
            return q_pos[:, :, None] // self.size == k_pos[:, None, :] // self.size
        return None


def _rule(kind: str, config) -> LayerRule:
    if kind == SLIDING:
        window = getattr(config, "sliding_window", None)
        return LayerRule(SLIDING, int(window)) if window else LayerRule(FULL)
    if kind == CHUNKED:
        chunk = getattr(config, "attention_chunk_size", None)
        return LayerRule(CHUNKED, int(chunk)) if chunk else LayerRule(FULL)
    if kind == FULL:
        return LayerRule(FULL)
    raise ScyllaError(f"the target has '{kind}' layers; the adapter's KV cache serves plain attention only "
                      f"({FULL}, {SLIDING}, {CHUNKED})")


def _takes_mask_per_layer_type(decoder) -> bool:
    """Does the decoder's forward accept {layer_type: mask}? transformers' models that mix
    layer types take a dict prepared by `generate` (`causal_mask_mapping`); others apply one mask to all."""
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False
    return "causal_mask_mapping" in source


def layer_rules(config, decoder) -> dict[str, LayerRule]:
    """{layer type: rule} for the target's attention layers. One entry where every layer
    masks alike (the mask is then one tensor); one per type where the model takes a dict."""
    text = config.get_text_config()
    if getattr(text, "use_bidirectional_attention", False):
        raise ScyllaError("the target attends bidirectionally (an encoder); speculative decoding needs a causal LM")
    types = getattr(text, "layer_types", None)
    if not types:
        # Mistral-style configs window every layer when sliding_window is set.
        kind = SLIDING if getattr(text, "sliding_window", None) else FULL
        types = [kind] * text.num_hidden_layers
    rules = {t: _rule(t, text) for t in dict.fromkeys(types)}
    if len(set(rules.values())) == 1:
        return {types[0]: rules[types[0]]}
    if not _takes_mask_per_layer_type(decoder):
        raise ScyllaError(f"{type(decoder).__name__} mixes attention layer types ({', '.join(rules)}) but takes one "
                          "mask for all layers, so the adapter cannot apply each type's window; this architecture is "
                          "not supported")
    return rules


def layer_masks(rules: dict[str, LayerRule], visible: torch.Tensor, q_pos: torch.Tensor,
                k_pos: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive masks [b, 1, q, kv] from the tree's `visible` [b, 1, q, kv] (True = attend):
    one tensor, or {layer type: mask} where the rules differ by type. `k_pos` may be None
    where every rule is FULL (nothing is measured from positions)."""
    masks = {}
    for kind, rule in rules.items():
        allowed = rule.allows(q_pos, k_pos)  # [b, q, kv] or None
        keep = visible if allowed is None else visible & allowed[:, None]
        masks[kind] = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)
    return masks if len(masks) > 1 else next(iter(masks.values()))
