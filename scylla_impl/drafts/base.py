"""What every draft shares: its config, the decode-time interface, and checkpoint folders.

A draft sees pairs (token t+1, feature t): the next token's embedding beside the target's
feature at t, and predicts the feature and token at t+1. During decoding it keeps its own
RowKVCache: `extend` commits pairs whose features came from the target, `expand` scores a
tree level from the draft's own predicted features (tentative), `rollback` drops them.

A draft may predict over a reduced vocabulary: the draft_vocab_size most frequent target
tokens (FR-Spec, EAGLE-3). Its checkpoint stores them as EAGLE-3 and SpecForge do:
`d2t[i]` = target id of draft id i, minus i (an offset), and `t2d` marks the target ids kept.
EAGLE-2 and Scylla then score the target's own frozen LM-head rows of those tokens, so a
draft level reads a fraction of the head a full-vocabulary draft reads.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from scylla_impl import row_attention, skinny_linear
from scylla_impl.compiled import compile_step
from scylla_impl.drafts.layers import rotary
from scylla_impl.gqa_attention import draft_mask
from scylla_impl.kv_cache import RowKVCache
from scylla_impl.layer_masks import FULL
from scylla_impl.methods import PROJECTION
from workloads.errors import ScyllaError
from workloads.files import atomic_write, atomic_write_bytes

# Version of the checkpoint layout; 2: d2t holds offsets (EAGLE-3 / SpecForge), any method may
# have a reduced vocabulary.
DRAFT_FORMAT = 2


@dataclass
class DraftConfig:
    method: str
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    vocab_size: int  # the target's
    num_layers: int = 1
    draft_vocab_size: int = 0  # the reduced vocabulary's size; 0 = the target's own
    feature_layers: list[int] = field(default_factory=list)  # target layers whose inputs feed the draft
    target_name: str = ""
    target_hidden_size: int = 0
    target_fingerprint: str = ""
    pretrain_tokens: int | None = None
    sft_tokens: int | None = None
    rope_scaling: dict | None = None  # None, or Llama-3.1's llama3 scaling (layers.inverse_frequencies)
    # How the token's embedding and the feature enter the first layer (Draft.inputs lists what a
    # method supports, its own first): "projection", a linear map of their concatenation to the
    # hidden size (EAGLE-2, Scylla); "concat", the concatenation itself, normed, read by the first
    # layer's attention (EAGLE-3; Scylla's architecture ablation). "": the method's own.
    draft_input: str = ""
    format: int = DRAFT_FORMAT

    @classmethod
    def from_target(cls, method: str, target, **overrides) -> "DraftConfig":
        cfg = target.model.config.get_text_config()
        heads = cfg.num_attention_heads
        rope = getattr(cfg, "rope_parameters", None) or {}
        if "rope_theta" not in rope and FULL in rope:
            # Per layer type (Gemma-3: 1e6 for full attention, 1e4 for sliding layers): the
            # draft attends over the whole context, as the target's full-attention layers do.
            rope = rope[FULL]
        values = dict(
            method=method,
            hidden_size=cfg.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            intermediate_size=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size,
            rms_norm_eps=getattr(cfg, "rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
            vocab_size=target.info.vocab_size,
            target_name=target.info.name,
            target_hidden_size=target.info.hidden_size,
            target_fingerprint=target.info.fingerprint,
        )
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class DraftInfo:
    method: str
    layers: int
    checkpoint: str  # folder, or "random:<method>" / "oracle"
    pretrain_tokens: int | None = None
    weights_hash: str | None = None  # of the checkpoint's model.safetensors; None when not loaded from one
    draft_input: str | None = None  # DraftConfig.draft_input; None: a draft without one (lookup, oracle)
    dtype: str | None = None  # of its weights as placed ("bfloat16"); None: a draft without weights


class Draft(nn.Module):
    """Base of the trainable drafts. Subclasses define `_inputs` and `_head`."""

    # What sets an architecture apart where new_draft and training must know it, so that they
    # never compare method names.
    own_head = False  # True: the draft trains its own LM head (EAGLE-3) instead of the target's
    # False: its output is no target feature to regress onto (EAGLE-3), so it learns from CE alone.
    regresses_features = True
    # True: a norm before the target's head (Scylla), which training starts at the feature scale.
    norm_before_target_head = False
    fuses_layers = False  # True: it reads the inputs of several target layers (EAGLE-3)
    max_layers = 1  # decoder layers it may have; EAGLE's drafts have one
    untrained_vocab = 0  # reduced vocabulary of a random-init draft; 0: the target's
    inputs: tuple[str, ...] = (PROJECTION,)  # the DraftConfig.draft_input values it is built for

    @classmethod
    def input_path(cls, method: str, draft_input: str | None) -> str:
        """`draft_input` (DraftConfig.draft_input) if this class is built for it; None or "": its own."""
        if not draft_input:
            return cls.inputs[0]
        if draft_input not in cls.inputs:
            raise ScyllaError(f"{method} drafts take draft input {' or '.join(cls.inputs)}, not '{draft_input}'")
        return draft_input

    def __init__(self, config: DraftConfig, target):
        super().__init__()
        # "": a checkpoint from before the field, or a new draft of the method's own input path.
        self.config = replace(config, draft_input=self.input_path(config.method, config.draft_input))
        # The target's embedding (and LM head) are frozen and belong to the target:
        # kept out of the module tree so they are neither trained nor saved.
        self._target_parts = (target.embed, target.lm_head)
        self.checkpoint = f"random:{config.method}"
        self.weights_hash: str | None = None
        self.cache: RowKVCache | None = None
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin by position (start)
        self._dtype: torch.dtype | None = None  # of the parameters, as placed (start)
        self.compiled = False  # place() compiles the tree level beside a --compile target
        self.static_cache = False  # ...over a static KV cache (kv_cache.py)
        self._level = self._score_level
        self._path = self._score_path
        if config.draft_vocab_size:
            vd, v = config.draft_vocab_size, config.vocab_size
            if not 1 <= vd <= v:
                raise ScyllaError(f"draft vocabulary of {vd} tokens: must be 1..{v} (the target's vocabulary)")
            # Until token counts set it (set_vocab), the draft vocabulary is the first vd target ids.
            self.register_buffer("d2t", torch.zeros(vd, dtype=torch.long), persistent=True)
            self.register_buffer("t2d", torch.arange(v) < vd, persistent=True)
        self._vocab_changed()

    # -- model ----------------------------------------------------------------------
    @property
    def embed(self) -> nn.Embedding:
        return self._target_parts[0]

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return tuple(self.config.feature_layers)

    @property
    def info(self) -> DraftInfo:
        return DraftInfo(self.config.method, self.config.num_layers, self.checkpoint, self.config.pretrain_tokens,
                         self.weights_hash, self.config.draft_input,
                         str(next(self.parameters()).dtype).removeprefix("torch."))

    def _inputs(self, tokens, features, from_target: bool):
        """-> (residual stream input [b,q,h], attention input of layer 0 or None)."""
        raise NotImplementedError

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        """Draft output [.., h] -> logits over the draft vocabulary."""
        raise NotImplementedError

    @property
    def draft_vocab(self) -> int:
        """Tokens the draft can propose."""
        return self.config.draft_vocab_size or self.config.vocab_size

    @property
    def reduced(self) -> bool:
        return bool(self.config.draft_vocab_size)

    def draft_token_ids(self) -> torch.Tensor:
        """[V'] the target id of each draft id."""
        if not self.reduced:
            return torch.arange(self.config.vocab_size, device=next(self.parameters()).device)
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocabulary ids to target token ids (identity unless the vocab is reduced)."""
        return draft_ids + self.d2t[draft_ids] if self.reduced else draft_ids

    def set_vocab(self, token_counts: torch.Tensor) -> None:
        """Keep the draft_vocab_size most frequent target tokens (ties by lower id)."""
        vd = self.d2t.numel()
        order = torch.argsort(-token_counts.float(), stable=True)[:vd]
        ids = torch.sort(order).values.to(self.d2t.device)
        self.d2t.copy_(ids - torch.arange(vd, device=ids.device))
        self.t2d.zero_()
        self.t2d[ids] = True
        self._vocab_changed()

    def _vocab_changed(self) -> None:
        """Refresh what depends on the draft vocabulary: for drafts that score with the target's
        LM head, its rows for the draft vocabulary."""
        if not self.own_head:
            self._slice_target_head()

    def _target_head(self, out: torch.Tensor) -> torch.Tensor:
        """Logits of the target's frozen LM head, over the draft vocabulary."""
        if not self.reduced:
            head = self._target_parts[1]  # the target's own module, in the target's dtype
            return head(out.to(head.weight.dtype))
        return skinny_linear.linear(out, self.head_weight, self.head_bias)

    def _slice_target_head(self) -> None:
        """Non-persistent copies of the target head's rows for the draft vocabulary: they belong
        to the target, so they are rebuilt from it, never saved."""
        if not self.reduced:
            return
        head = self._target_parts[1]
        ids = self.draft_token_ids().to(head.weight.device)
        self.register_buffer("head_weight", head.weight.detach()[ids], persistent=False)
        bias = head.bias.detach()[ids] if head.bias is not None else None
        self.register_buffer("head_bias", bias, persistent=False)

    def hidden_states(self, tokens, features, from_target: bool, positions, mask, cache=None):
        x, attn_input = self._inputs(tokens, features, from_target)
        if cache is not None and cache is self.cache:
            # Decoding (start made the table with the cache): two rows of the table per token
            # instead of the ~15 small ops that compute them, each of which costs microseconds
            # beside a level's few matmuls. Training's unrolled steps compute theirs.
            cos, sin = (table[positions][:, None] for table in self._rope_table)  # [b, 1, q, head_dim]
        else:
            cos, sin = rotary(positions, self.config.head_dim, self.config.rope_theta, x.dtype,
                              self.config.rope_scaling)  # [b, 1, q, head_dim]
        mask = draft_mask(mask, x.shape[0], x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, attn_input if i == 0 else None)
        return x

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        return self._head(out)

    # -- decoding ---------------------------------------------------------------------
    def start(self, prompts: list[list[int]], capacity: int = 256) -> None:
        param = next(self.parameters())
        self.cache = RowKVCache(len(self.layers), len(prompts), param.device, capacity, static=self.static_cache)
        self._dtype = param.dtype
        # The same elementwise ops as `rotary` per position, so a row of the table has the bits
        # a forward would compute for that position.
        cos, sin = rotary(torch.arange(capacity, device=param.device)[None], self.config.head_dim,
                          self.config.rope_theta, param.dtype, self.config.rope_scaling)  # [1, 1, capacity, head_dim]
        self._rope_table = (cos[0, 0], sin[0, 0])  # [capacity, head_dim] each

    @torch.no_grad()
    def extend(self, tokens, features, counts):
        """Commit counts[r] pairs per row; return log-probs and output at each row's last pair."""
        b, q = tokens.shape
        cache = self.cache
        idx = torch.arange(q, device=cache.device)
        causal = (idx[:, None] >= idx[None, :]).expand(b, q, q)
        positions = cache.positions(idx.expand(b, q))
        counts = counts.to(cache.device)
        # Up to MAX_QUERIES pairs (a step's accepted path, a short prompt) take the compiled
        # forward; a longer prompt stays eager, as the target's prefill does, rather than compile
        # its attention's other branch (SDPA) as one more graph.
        score = self._path if q <= row_attention.MAX_QUERIES else self._score_path
        logprobs, last = score(tokens, features.to(self._dtype), positions, cache.attention_mask(causal), cache, counts - 1)
        cache.advance(idx.expand(b, q))
        cache.commit(idx.expand(b, q), counts)
        return logprobs, last

    @torch.no_grad()
    def expand(self, tokens, hidden, depths, new_mask):
        """Score one tree level (tentative): tokens [b,k] fed with their parents' outputs."""
        cache = self.cache
        logprobs, out = self._level(tokens, hidden, cache.positions(depths), cache.attention_mask(new_mask), cache)
        cache.advance(depths)
        return logprobs, out

    def _score_path(self, tokens, features, positions, mask, cache, last_index):
        """An accepted path's forward, read out after each row's last real pair (last_index [b]):
        the other part --compile compiles."""
        out = self.hidden_states(tokens, features, True, positions, mask, cache)  # [b, q, h]
        last = out[torch.arange(out.shape[0], device=out.device), last_index]  # [b, h]
        return F.log_softmax(self.logits(last).float(), dim=-1), last

    def _score_level(self, tokens, hidden, positions, mask, cache):
        """One level's forward: the part --compile compiles (scylla_impl/compiled.py)."""
        out = self.hidden_states(tokens, hidden, False, positions, mask, cache)
        return F.log_softmax(self.logits(out).float(), dim=-1), out

    def rollback(self) -> None:
        self.cache.rollback()

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.cache.keep_rows(rows)

    # -- checkpoints ------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"architectures": [type(self).__name__], **asdict(self.config)}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        # Weights first, config last: a folder with a config.json holds matching weights.
        atomic_write(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        atomic_write_bytes(json.dumps(config, indent=2).encode(), folder / "config.json")
        return folder


def decode_dtype(target) -> torch.dtype:
    """The precision a draft decodes in beside `target`: the target's own, except beside an fp32
    target on a device that multiplies a few rows in bf16 natively (the CPU kernel built for bf16,
    skinny_linear.py; a GPU with bf16), where it is bf16. What is emitted cannot change, since the
    target verifies every token in its own precision; a draft level reads half the bytes; and tau
    barely moves (where bf16 is fast, training reads the target's features in bf16 anyway). On the
    2-core EPYC beside the fp32 target, Scylla-1 (long recipe, k2 d2 n4, 18 prompts of MT-bench,
    HumanEval and GSM8K alternating in one process) kept tau 1.69 while its step went from 45.5
    to 40.7 ms: spec/AR 1.38x -> 1.54x."""
    if target.dtype != torch.float32:
        return target.dtype
    device = torch.device(target.device)
    if device.type == "cpu":
        native = torch.bfloat16 in skinny_linear.dtypes()
    else:
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def place(draft: Draft, target, dtype: torch.dtype | None = None) -> Draft:
    """The draft ready to decode beside `target`: on its device, in `dtype` (None: decode_dtype;
    training and export ask for float32), in eval mode, its few-row CPU matmuls (fp32, and bf16
    where the CPU has AVX512-BF16) through the same kernel as the target's (skinny_linear.py),
    its tree level and accepted path compiled where the target's step is (--compile)."""
    draft = draft.to(device=target.device, dtype=dtype or decode_dtype(target)).eval()
    skinny_linear.install(draft)
    if target.compiled and not draft.compiled:
        draft.compiled = draft.static_cache = True
        draft._level = compile_step(draft._score_level, f"the {draft.config.method} draft's level")
        draft._path = compile_step(draft._score_path, f"the {draft.config.method} draft's accepted path")
    return draft


def read_config(folder: Path) -> DraftConfig:
    path = folder / "config.json"
    if not path.is_file() or not (folder / "model.safetensors").is_file():
        raise ScyllaError(f"'{folder}' is not a draft checkpoint (needs config.json and model.safetensors)")
    try:
        raw = json.loads(path.read_text())
        raw.pop("architectures", None)
        found = raw.get("format", 1)
        if found != DRAFT_FORMAT:
            raise ScyllaError(f"draft '{folder}' is in checkpoint format {found}; this scylla-bench reads format "
                              f"{DRAFT_FORMAT} (d2t as offsets): retrain it with `scylla train`")
        return DraftConfig(**raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError, AttributeError) as err:
        raise ScyllaError(f"bad draft config {path}: {str(err).splitlines()[0]}") from None


def check_target(config: DraftConfig, target, folder) -> None:
    if config.target_fingerprint != target.info.fingerprint:
        raise ScyllaError(
            f"draft '{folder}' was trained for target '{config.target_name}' "
            f"(fingerprint {config.target_fingerprint}), not '{target.info.name}' ({target.info.fingerprint})"
        )


def load_weights(draft: Draft, folder: Path) -> None:
    """Load the folder's weights into `draft`; `draft.weights_hash` identifies them (sha256 of the file)."""
    try:
        blob = (folder / "model.safetensors").read_bytes()
        state = load_safetensors(blob)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own types for torn or foreign files
        raise ScyllaError(f"draft '{folder}': model.safetensors cannot be read ({str(err).splitlines()[0]}); "
                          "retrain or copy it again") from None
    try:
        missing, unexpected = draft.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape for the config
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise ScyllaError(f"draft '{folder}' does not match its config: {lines[0] if lines else err}") from None
    if missing or unexpected:
        raise ScyllaError(f"draft '{folder}' does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    draft._vocab_changed()
    draft.weights_hash = hashlib.sha256(blob).hexdigest()[:16]
