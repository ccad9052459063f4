"""The target adapter: any Hugging Face decoder-only LM, scoring whole draft trees per row.

One forward takes new tokens for every row with their positions (row length + depth)
and an ancestor mask among them; committed tokens of the row are visible, padding holes
are not. It returns logits plus the hidden states drafts need, and the cache then keeps
only what `commit` says. The AR baseline is the same forward with a one-token "tree".
"""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import Cache, DynamicLayer

from scylla_impl import devices, dtypes, gqa_attention, skinny_linear, target_norms
from scylla_impl.compiled import compile_step
from scylla_impl.embedded import DEFAULT_NAME
from scylla_impl.kv_cache import RowKVCache
from scylla_impl.layer_masks import FULL, layer_masks, layer_rules
from scylla_impl.precision import choose, fast_dtype
from scylla_impl.target_path import model_path
from workloads.cache import scylla_home
from workloads.errors import ScyllaError, first_line
from workloads.files import atomic_write_bytes

DTYPES = {name: getattr(torch, name) for name in dtypes.NAMES}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", target: str = "default") -> torch.dtype:
    """A dtype name, or `auto`: the precision that decodes `target` faster on `device` (auto_dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == dtypes.AUTO:
        dtype = auto_dtype(target, str(device))
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ScyllaError(f"unknown dtype '{dtype}'; choose one of {', '.join(dtypes.CHOICES)}") from None


AUTO_DTYPE_FILE = "auto_dtype.json"


def auto_dtype(target: str = "default", device: str = "cpu") -> str:
    """`--dtype auto` for decoding `target` on `device`. bf16 on a GPU that has it; fp32 where
    bf16 is not even faster for big matmuls (emulated: scylla_impl/precision.py). Otherwise, on
    a CPU with native bf16, whichever decodes this model faster, timed on the model itself in
    both precisions (an AR step and an 8-token verify, `decode_step_seconds`): once per model,
    machine and thread count, remembered in SCYLLA_HOME/auto_dtype.json with the times."""
    device = devices.resolve(device)
    if torch.device(device).type != "cpu" or fast_dtype(device) == "float32":
        return fast_dtype(device)
    path = model_path(target)
    key = f"{Path(path).resolve()}|{skinny_linear.cpu_signature()}|threads={torch.get_num_threads()}"
    record = scylla_home() / AUTO_DTYPE_FILE
    try:
        known = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}  # a damaged record is measured again
    times = known.get(key, {})
    if isinstance(times.get("float32_step_s"), float) and isinstance(times.get("bfloat16_step_s"), float):
        return choose(times["float32_step_s"] / times["bfloat16_step_s"])  # the rule as it is now, on the times kept
    seconds = {}
    for name in ("float32", "bfloat16"):
        seconds[name] = Target.load(path, dtype=name, device=device).decode_step_seconds()
    choice = choose(seconds["float32"] / seconds["bfloat16"])
    known[key] = {"dtype": choice, **{f"{name}_step_s": s for name, s in seconds.items()}}
    atomic_write_bytes(json.dumps(known, indent=2).encode(), record)
    return choice


def load_tokenizer(path: str, name: str):
    """The tokenizer of the model at `path` (what model_path returned for `name`), or one line
    that says what is missing."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        what = first_line(err)
        if Path(path).is_dir():  # transformers' text lists four ways a tokenizer can be built, cut at its first line
            what = (f"no tokenizer it can load: it needs tokenizer.json, or a slow tokenizer's files with "
                    f"sentencepiece installed (transformers: {what})")
        raise ScyllaError(f"cannot load target '{name}': {what}") from None


def _load_model(path: str, dtype: torch.dtype):
    """SDPA where the architecture has it (it takes our 4D tree mask as is); eager attention
    for those that do not (Gemma-2's logit soft-capping)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        model.set_attn_implementation(gqa_attention.NAME)  # SDPA without the per-verify copy of the KV heads
        return model
    except ValueError as err:
        if "attention implementation" not in str(err):
            raise
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")


@dataclass(frozen=True)
class TargetInfo:
    name: str
    path: str
    hidden_size: int
    vocab_size: int
    num_layers: int
    fingerprint: str  # identifies the weights, whatever dtype they were loaded in
    context: int | None = None  # positions the model is built for (its config's); None: none stated


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [b, q, vocab] float32
    hidden: torch.Tensor  # [b, q, hidden] last hidden state after the final norm
    layer_inputs: torch.Tensor | None = None  # [b, q, len(layers) * hidden]: inputs of chosen layers


class _RowLayer(DynamicLayer):
    """Routes one transformer layer's KV updates into the shared RowKVCache."""

    def __init__(self, store: RowKVCache, index: int):
        super().__init__()
        self.store, self.index = store, index
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return self.store.update(self.index, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.store.committed_end + self.store.tentative


class TargetCache(RowKVCache):
    """RowKVCache plus the transformers Cache view the model writes through."""

    def __init__(self, num_layers: int, batch_size: int, device, capacity: int = 256, static: bool = False):
        super().__init__(num_layers, batch_size, device, capacity, static)
        self.hf = Cache(layers=[_RowLayer(self, i) for i in range(num_layers)])


class Target:
    def __init__(self, model, tokenizer, info: TargetInfo, compile: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.decoder = _decoder_of(model)
        self.lm_head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        # A multimodal model (Gemma-3 4B and up) keeps the language model's settings in its text config.
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.layer_rules = layer_rules(model.config, self.decoder)  # sliding windows, chunks
        self.windowed = any(rule.kind != FULL for rule in self.layer_rules.values())
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        # Few-row fp32 CPU matmuls at weight-read speed (skinny_linear.py); "torch" elsewhere.
        self.matmul = "skinny" if skinny_linear.install(model) else "torch"
        self.fused_norms = target_norms.install(model)  # RMSNorms as one operator each in decode steps
        # --compile: steps (not prefills) through one compiled forward over static caches.
        self.compiled = compile
        self.static_cache = compile  # compiled steps need fixed shapes; tests run static caches eagerly too
        self._step_forward = compile_step(self._decode, "the target's step") if compile else self._decode

    @classmethod
    def load(cls, name: str = "default", dtype: str | torch.dtype = dtypes.AUTO, device: str = "cpu",
             compile: bool = False) -> "Target":
        device = devices.resolve(str(device))
        path = model_path(name)
        torch_dtype = resolve_dtype(dtype, device, path)
        tokenizer = load_tokenizer(path, name)
        try:
            model = _load_model(path, torch_dtype)
        except (OSError, ValueError) as err:
            raise ScyllaError(f"cannot load target '{name}': {first_line(err)}") from None
        model.to(device)
        display = DEFAULT_NAME if name == "default" else name
        cfg = model.config.get_text_config()
        info = TargetInfo(
            name=display,
            path=path,
            hidden_size=cfg.hidden_size,
            vocab_size=model.get_output_embeddings().weight.shape[0],
            num_layers=cfg.num_hidden_layers,
            fingerprint=_fingerprint(model),
            context=_context_length(cfg),
        )
        target = cls(model, tokenizer, info, compile)
        check_tree_scoring(target)
        return target

    @torch.no_grad()
    def decode_step_seconds(self, reps: int = 5) -> float:
        """Median seconds of an AR step plus an 8-token verify after a 32-token prompt (CPU
        wall time: what `auto_dtype` compares between precisions)."""
        cache = self.new_cache(1, 48)
        self.prefill(cache, [[1 + i % (self.info.vocab_size - 1) for i in range(32)]])
        steps = []
        for n in (1, 8):
            tokens = torch.ones(1, n, dtype=torch.long, device=self.device)  # [1, n]
            depths = torch.arange(n, device=self.device)[None]  # [1, n]
            mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=self.device))[None]  # [1, n, n]
            steps.append((tokens, depths, mask))
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            start = time.perf_counter()
            for tokens, depths, mask in steps:
                self.forward(cache, tokens, depths, mask)
                self.rollback(cache)
            times.append(time.perf_counter() - start)
        return sorted(times[1:])[reps // 2]

    # -- cache ----------------------------------------------------------------------
    def new_cache(self, batch_size: int, capacity: int = 256) -> TargetCache:
        return TargetCache(self.info.num_layers, batch_size, self.device, capacity, static=self.static_cache)

    def rollback(self, cache: TargetCache) -> None:
        cache.rollback()

    def commit(self, cache: TargetCache, keep: torch.Tensor, counts: torch.Tensor) -> None:
        cache.commit(keep, counts)

    def keep_rows(self, cache: TargetCache, rows: torch.Tensor) -> None:
        cache.keep_rows(rows)

    # -- forwards -------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, cache: TargetCache, prompts: list[list[int]], layers: tuple[int, ...] = ()) -> TargetOutput:
        """Run the prompts (rows may differ in length) and commit them.

        Returns hidden states for every prompt position, padded to the longest prompt, and
        logits [b, 1, V] at each row's last prompt token only: the head over every position
        would cost a quarter of the prefill's compute for logits nothing reads.
        """
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        q = int(lengths.max())
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        tokens = torch.tensor([p + [pad] * (q - len(p)) for p in prompts], device=self.device)
        idx = torch.arange(q, device=self.device)
        real = idx[None, :] < lengths[:, None]
        causal = idx[None, :, None] >= idx[None, None, :]
        # Padding queries see only themselves so no row of the mask is empty.
        mask = (causal & real[:, None, :]) | (torch.eye(q, dtype=torch.bool, device=self.device) & ~real[:, :, None])
        out = self.forward(cache, tokens, idx.expand(len(prompts), q), mask, layers, logits_at=lengths - 1,
                           step=False)
        keep = idx.expand(len(prompts), q)
        cache.commit(keep, lengths)
        return out

    @torch.no_grad()
    def forward_tree(self, cache: TargetCache, tokens: torch.Tensor, depths: torch.Tensor,
                     mask: torch.Tensor, layers: tuple[int, ...] = ()) -> TargetOutput:
        """Score a tree per row: tokens/depths [b, n], mask [b, n, n] (True = ancestor or self)."""
        return self.forward(cache, tokens, depths, mask, layers)

    def forward(self, cache: TargetCache, tokens: torch.Tensor, depths: torch.Tensor,
                new_mask: torch.Tensor, layers: tuple[int, ...] = (),
                logits_at: torch.Tensor | None = None, step: bool = True) -> TargetOutput:
        """Append q tokens per row; new_mask [b, q, tentative + q] says which tentative and
        new tokens each may see (committed tokens of its row are always visible). `logits_at`
        [b]: compute logits at that one index per row only. `step=False` (a prefill) stays
        eager under --compile: each prompt length would be a new shape."""
        positions = cache.positions(depths)  # [b, q]
        key_positions = cache.key_positions(depths) if self.windowed else None  # [b, kv]
        mask = layer_masks(self.layer_rules, cache.attention_mask(new_mask), positions, key_positions, self.dtype)
        run = self._step_forward if step else self._decode
        hidden, layer_inputs = run(tokens.to(self.device), mask, positions, cache.hf, layers)
        cache.advance(depths)
        return self._outputs(hidden, layer_inputs, logits_at)

    def _decode(self, tokens: torch.Tensor, mask, positions: torch.Tensor, cache: Cache,
                layers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder over new tokens [b, q] -> (last hidden state [b, q, h], inputs of `layers`
        [b, q, len(layers) * h] or None): the part --compile compiles."""
        out = self.decoder(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache,
                           use_cache=True, output_hidden_states=bool(layers))
        layer_inputs = torch.cat([out.hidden_states[i] for i in layers], dim=-1) if layers else None
        return out.last_hidden_state, layer_inputs

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, layers: tuple[int, ...] = ()) -> TargetOutput:
        """Plain causal forward over whole sequences [b, T] (no cache): what draft training reads."""
        out = self.decoder(input_ids=input_ids.to(self.device), use_cache=False,
                           output_hidden_states=bool(layers))
        layer_inputs = torch.cat([out.hidden_states[i] for i in layers], dim=-1) if layers else None
        return self._outputs(out.last_hidden_state, layer_inputs)

    def _outputs(self, hidden: torch.Tensor, layer_inputs: torch.Tensor | None,
                 logits_at: torch.Tensor | None = None) -> TargetOutput:
        """Logits (float32, soft-capped where the model does) beside the features drafts read."""
        if logits_at is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            logits = self.lm_head(hidden[rows, logits_at][:, None]).float()  # [b, 1, V]
        else:
            logits = self.lm_head(hidden).float()  # [b, q, V]
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return TargetOutput(logits=logits, hidden=hidden, layer_inputs=layer_inputs)


# How far a node's logits scored inside a tree may lie from the same text scored plainly, in
# root-mean-square over the vocabulary, relative to the logits' own spread. In fp32 the two agree
# to rounding (the embedded target: 4e-6), so 1e-4 also refuses an ALiBi model biased by cache slot
# instead of position (MPT, 3e-3). In bf16 and fp16 kernels that differ round differently (the
# embedded target: 0.08 in bf16), and a deeper model adds more, so a model is refused there only
# beyond a few dozen units in the last place and no closer to AR than the same tree with its mask
# broken on purpose is: an architecture that ignored the tree mask scores the two alike.
EXACT_RELATIVE_ERROR = 1e-4
REDUCED_PRECISION_ULPS = 32


@torch.no_grad()
def check_tree_scoring(target: "Target") -> None:
    """Refuse, with a clear error, an architecture the adapter cannot drive exactly: score a root
    and two sibling children after a short prompt, and compare each node with a plain causal
    forward over the prompt, the root and that node alone. A model that builds its own mask or
    positions (ALiBi from a 2-D padding mask) would let the second child see the first, or place
    it a slot too far, and speculative decoding would then change its output."""
    vocab = target.info.vocab_size
    prompt = [(31 * i + 7) % vocab for i in range(6)]
    root, first, second = 101 % vocab, 202 % vocab, 303 % vocab
    name = type(target.model).__name__
    device = target.device

    def tree_logits(second_sees_first: bool) -> torch.Tensor:
        cache = target.new_cache(1, 16)
        target.prefill(cache, [prompt])
        tokens = torch.tensor([[root, first, second]], device=device)  # [1, 3]
        depths = torch.tensor([[0, 1, 1]], device=device)  # [1, 3]: two siblings under the root
        mask = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, int(second_sees_first), 1]]], dtype=torch.bool,
                            device=device)  # [1, 3, 3]
        return target.forward(cache, tokens, depths, mask, step=False).logits[0]  # [3, V]

    try:
        tree = tree_logits(second_sees_first=False)
        plain = [target.features(torch.tensor([prompt + [root, child]], device=device)).logits[0]
                 for child in (first, second)]  # 2 x [8, V]
    except ScyllaError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the model's own code raises on the adapter's inputs
        raise ScyllaError(f"{name} cannot score a draft tree through the adapter ({type(err).__name__}: "
                          f"{first_line(err)[:200]}); "
                          "this architecture is not supported") from None
    want = torch.stack([plain[0][-2], plain[0][-1], plain[1][-1]])  # [3, V] root, first child, second child
    spread = (want - want.mean(-1, keepdim=True)).pow(2).mean(-1).sqrt().clamp_min(1e-12)  # [3]

    def relative_error(logits: torch.Tensor) -> torch.Tensor:  # [3, V] -> [3]
        return (logits - want).pow(2).mean(-1).sqrt() / spread

    error = float(relative_error(tree).max())
    exact = target.dtype == torch.float32
    allowed = EXACT_RELATIVE_ERROR if exact else REDUCED_PRECISION_ULPS * torch.finfo(target.dtype).eps
    if not exact and error > allowed:  # beyond the noise only if as far from plain as a broken mask is
        allowed = max(allowed, 0.5 * float(relative_error(tree_logits(second_sees_first=True))[2]))
    if not error <= allowed:
        raise ScyllaError(f"{name} scores a draft tree differently from the same text scored plainly (relative error "
                          f"{error:.1e}, allowed {allowed:.1e} in {str(target.dtype).removeprefix('torch.')}): it does "
                          "not take the tree's mask or positions as the adapter passes them, so speculative decoding "
                          "would change its output; this architecture is not supported")


# Where configs state the longest sequence a model takes (GPT-2's n_positions is also read
# as max_position_embeddings through its attribute map).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _context_length(text) -> int | None:
    """The longest sequence the text config says the model takes: its stated length, or longer
    where its rotary embedding is scaled (YaRN and kin, often switched on without the stated
    length changing: Qwen2.5's 32k becomes 128k with factor 4)."""
    stated = next((v for v in (getattr(text, name, None) for name in CONTEXT_FIELDS) if isinstance(v, int) and v > 0),
                  None)
    rope = getattr(text, "rope_parameters", None) or {}
    # One dict, or one per attention layer type (Gemma-3).
    kinds = [rope] if "rope_type" in rope or "factor" in rope else [v for v in rope.values() if isinstance(v, dict)]
    scaled = [int(factor * (kind.get("original_max_position_embeddings") or stated or 0)) for kind in kinds
              if kind.get("rope_type", "default") != "default" and isinstance(factor := kind.get("factor"), int | float)]
    return max([n for n in (stated, *scaled) if n], default=None)


def _decoder_of(model):
    """The decoder stack under the LM head. `get_decoder` returns the model itself where a
    class's base_model_prefix does not name its stack (Llama-4's text model sits at .model)."""
    decoder = model.get_decoder()
    if decoder is model and isinstance(getattr(model, "model", None), torch.nn.Module):
        decoder = model.model
    if decoder is model:
        raise ScyllaError(f"cannot find the decoder stack of {type(model).__name__}; this architecture is not supported")
    return decoder


def _fingerprint(model) -> str:
    """Hash of the architecture and a slice of the embedding, independent of load dtype."""
    cfg = {k: v for k, v in model.config.to_dict().items()
           if k not in ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "name_or_path")}
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    embed = model.get_input_embeddings().weight
    digest.update(embed[:8].detach().to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_layer_choice(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's feature layers: inputs of layers 2, L//2 and L-3."""
    return (2, num_layers // 2, num_layers - 3)


__all__ = ["Target", "TargetInfo", "check_tree_scoring", "TargetOutput", "TargetCache", "auto_dtype", "resolve_dtype", "default_layer_choice",
           "DTYPES", "Path"]
