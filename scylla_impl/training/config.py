"""What one draft training run is: a typed config, and the default recipe per method.

A run is two stages over the same draft: stage 1 pretrains on the general corpus, stage 2
fine-tunes on chat (assistant tokens only). Token budgets count every packed token fed to
the target (prompt tokens of a chat included); the loss mask decides which are learned.
"""

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scylla_impl import devices, dtypes
from scylla_impl.methods import BY_NAME, DRAFT_INPUTS, TRAINED
from workloads.corpora import SFT_SOURCES, check_shares
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes

METHOD_NAMES = TRAINED
STAGES = ("pretrain", "sft")
SFT_ANSWERS = ("sharegpt", "target")
AUTOCAST = ("auto", "bf16", "off")
CONFIG_FILE = "train_config.json"  # a run folder's TrainConfig, what --resume reads


@dataclass(frozen=True)
class Option:
    """A TrainConfig field that is also a `scylla train` option (harness/commands/train.py makes
    the flag from it: `--field-name`, its type, and the help with the default the field holds)."""

    help: str
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # the flag's text -> the field's value (token counts, shares)
    metavar: str | None = None


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, **kw)})


def _parse_mix(text: str) -> dict[str, float]:
    return parse_shares(text, "--sft-mix")


@dataclass
class TrainConfig:
    method: str
    target: str = "default"
    layers: int | None = _opt(None, "decoder layers of a scylla draft (default 1)")
    draft_input: str | None = _opt(None, "how the embedding and the feature enter a draft's first layer: "
                                         "projection (EAGLE-2, Scylla) or concat (EAGLE-3; Scylla's ablation); "
                                         "default: the method's own", choices=DRAFT_INPUTS)
    pretrain_tokens: int = _opt(0, "stage-1 budget, e.g. 16k, 1.5M", parse=lambda t: parse_tokens(t), metavar="N")
    sft_tokens: int = _opt(0, "stage-2 (chat SFT) budget", parse=lambda t: parse_tokens(t), metavar="N")
    seq_len: int = _opt(256, "packed sequence length")
    # 2 sequences a step: at the default budget the draft is short of optimizer steps, not of
    # data (BUDGETS below); 4 a step gave the same tokens 0.04 less simulated acceptance.
    batch_size: int = _opt(2, "global batch in sequences, per optimizer step")
    micro_batch: int = _opt(2, "sequences per forward per process (gradient accumulation above it)")
    epochs: int = _opt(1, "passes over each stage's data (later passes read cached features)")
    lr: float = _opt(1e-3, "peak learning rate of both stages")
    sft_lr: float | None = None  # stage 2 peak learning rate (None: lr); each stage warms up anew
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of the stage's peak lr
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 0.5
    # Losses (EAGLE-1/2 and Scylla: feature_weight * SmoothL1 + ce_weight * soft CE; EAGLE-3: soft CE).
    feature_weight: float = 1.0
    ce_weight: float = _opt(0.1, "weight of the soft CE beside the feature regression")
    noise: float = 0.2  # width of the uniform noise added to target input features (EAGLE: U(-0.1, 0.1))
    ttt_steps: int = _opt(1, "unrolled steps trained (training-time test); EAGLE-3 uses several")
    step_decay: float = 0.8  # loss weight of unrolled step i is step_decay ** i
    ce_fraction: float = _opt(1.0, "share of positions whose logits enter the CE (the vocab head dominates CPU cost)")
    eval_steps: int = 5  # unrolled steps for per-position accuracy in the log (the tree depth)
    draft_vocab: int = _opt(0, "reduced draft vocabulary: the N most frequent trained tokens; 0 = the target's "
                               "full vocabulary (EAGLE-2 as published: --draft-vocab 0 --ttt-steps 1 "
                               "--sft-answers sharegpt)")
    head_from_target: bool = True  # EAGLE-3: start its LM head and final norm from the target's
    # Data.
    seed: int = _opt(0, "seed of the data order, the draft's initialisation and the SFT prompts")
    mix: dict[str, float] | None = None  # pretrain source ratios (None: the corpus default)
    pretrain_data: str | None = _opt(None, "a text file or folder of .txt files to pretrain on instead of the "
                                           "default mix", metavar="PATH")
    system_prompt: str | None = None
    sft_answers: str = _opt("sharegpt", "SFT on the target's own greedy answers (target, self-distillation) or on "
                                        "ShareGPT's (sharegpt)", choices=SFT_ANSWERS)
    sft_mix: dict[str, float] | None = _opt(None, "shares of the SFT prompts by source (sharegpt, code, math: "
                                                  "workloads/corpora/prompt_sources.py), e.g. sharegpt=2,code=1,math=1; "
                                                  "code and math need --sft-answers target (None: ShareGPT alone)",
                                            parse=_parse_mix, metavar="SOURCE=SHARE,...")
    max_epochs_of_data: int = 1  # how often a corpus may repeat before its budget counts as too big
    data_dir: str | None = None  # evaluation datasets to decontaminate against (None: the defaults)
    decontaminate: bool = True  # drop training documents that contain an evaluation prompt
    eval_sequences: int = 4  # held-out sequences per stage (never trained on) the log's accuracy is measured on
    # Machinery.
    features: str = _opt("cache", "target features cached on disk once, or recomputed every step (online)",
                         choices=("cache", "online"))
    # "auto" resolves on construction by the bulk rule (scylla_impl/precision.py): features are
    # hundreds of rows per matmul, where native bf16 extracts ~4x faster than fp32. Decoding may
    # run in fp32 on the same CPU (`auto` timed on the model, scylla_impl/target.py): the draft
    # then reads fp32 hidden states, which differ from its bf16 features by bf16's rounding only.
    dtype: str = _opt(dtypes.AUTO, "target precision for its features and labels; auto: bf16 where native and "
                                   "faster for many-row matmuls", choices=dtypes.CHOICES)
    autocast: str = _opt("auto", "bf16 autocast of the draft's training: auto = where measured faster than fp32",
                         choices=AUTOCAST)
    device: str = _opt("cpu", devices.HELP)
    checkpoint_every: int = _opt(50, "optimizer steps between checkpoints")
    keep_checkpoints: int = 2
    # An evaluation (5 unrolled steps over the held-out sequences) cost 1.5-3.8 training steps in
    # fp32 on a 2-core AVX512-BF16 EPYC, 13-27% of the default drafts' training at every 10 steps;
    # under the training's bf16 autocast (loop.py) it costs 1.4-1.7.
    log_every: int = _opt(50, "optimizer steps between held-out accuracy evaluations")
    name: str | None = _opt(None, "save as drafts_dir(target)/NAME (default: eagle2, eagle3, scylla-<layers>)")

    def __post_init__(self):
        self.betas = tuple(self.betas)
        # A wrong value fails before anything loads torch (resolving `auto`, a draft class): at once.
        self.check_values()
        if self.device == devices.AUTO:  # what a saved config (and a resume) records is what ran
            self.device = devices.resolve(self.device)
        devices.check_name(self.device)
        if self.dtype == dtypes.AUTO:
            from scylla_impl.precision import fast_dtype

            self.dtype = fast_dtype(self.device)
        self.check_draft()

    # -- checks -------------------------------------------------------------------------
    def check_draft(self) -> None:
        """The checks that load the draft class (the precision, `auto` resolved or given, and --layers >= 1
        were checked first, in check_values)."""
        deepest = BY_NAME[self.method].draft_class.max_layers
        if self.layers is not None and deepest == 1 and self.layers != 1:
            raise ScyllaError(f"--layers applies to scylla drafts; {self.method} has one decoder layer")
        if self.layers is not None and self.layers > deepest:
            raise ScyllaError(f"--layers must be 1..{deepest} (Scylla's deepest draft), got {self.layers}")
        BY_NAME[self.method].draft_class.input_path(self.method, self.draft_input)  # the check the draft makes, up front

    def check_values(self) -> None:
        """The checks that need neither the draft class nor the device: no torch."""
        if self.method not in METHOD_NAMES:
            raise ScyllaError(f"unknown draft method '{self.method}'; known: {', '.join(METHOD_NAMES)}")
        for name in ("pretrain_tokens", "sft_tokens"):
            if getattr(self, name) < 0:
                raise ScyllaError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.pretrain_tokens + self.sft_tokens == 0:
            raise ScyllaError("nothing to train: give --pretrain-tokens and/or --sft-tokens")
        if self.seq_len < 4:
            raise ScyllaError(f"seq-len must be at least 4, got {self.seq_len}")
        if self.batch_size < 1 or self.micro_batch < 1:
            raise ScyllaError("batch size and micro batch must be >= 1")
        for stage in STAGES:
            tokens = self.stage_tokens(stage)
            if 0 < tokens < self.seq_len * self.batch_size:
                raise ScyllaError(f"--{stage}-tokens {tokens} is less than one batch "
                                  f"({self.batch_size} sequences of {self.seq_len} tokens)")
        if self.dtype != dtypes.AUTO and self.dtype not in dtypes.NAMES:
            raise ScyllaError(f"dtype must be one of {', '.join(dtypes.CHOICES)}, got '{self.dtype}'")
        if self.features not in ("online", "cache"):
            raise ScyllaError(f"features must be 'online' or 'cache', got '{self.features}'")
        if self.autocast not in AUTOCAST:
            raise ScyllaError(f"autocast must be auto, bf16 or off, got '{self.autocast}'")
        for name in ("lr", "sft_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ScyllaError(f"{name.replace('_', '-')} must be a positive number, got {value}")
        if not 0 < self.ce_fraction <= 1:
            raise ScyllaError(f"ce_fraction must be in (0, 1], got {self.ce_fraction}")
        if self.sft_answers not in SFT_ANSWERS:
            raise ScyllaError(f"sft-answers must be one of {', '.join(SFT_ANSWERS)}, got '{self.sft_answers}'")
        if self.sft_mix is not None:
            check_shares(self.sft_mix, SFT_SOURCES, "SFT prompt")  # the check sft_prompts makes, up front
            if self.sft_answers != "target" and set(self.sft_mix) - {"sharegpt"}:
                raise ScyllaError("only ShareGPT prompts come with answers: an sft-mix with code or math "
                                  "needs --sft-answers target")
        if self.layers is not None and self.layers < 1:  # the upper bound is the draft class's (check_draft)
            raise ScyllaError(f"--layers must be >= 1, got {self.layers}")
        if self.draft_vocab < 0:
            raise ScyllaError(f"draft-vocab must be >= 0 (0 = the target's vocabulary), got {self.draft_vocab}")
        if self.ttt_steps < 1 or self.eval_steps < 1 or self.epochs < 1:
            raise ScyllaError("ttt_steps, eval_steps and epochs must be >= 1")
        if self.ttt_steps + 2 > self.seq_len or self.eval_steps + 2 > self.seq_len:
            raise ScyllaError(f"seq-len {self.seq_len} is too short for {max(self.ttt_steps, self.eval_steps)} unrolled steps")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ScyllaError("checkpoint_every and log_every must be >= 1")

    # -- derived ------------------------------------------------------------------------
    def stage_tokens(self, stage: str) -> int:
        return {"pretrain": self.pretrain_tokens, "sft": self.sft_tokens}[stage]

    def stage_lr(self, stage: str) -> float:
        if stage == "sft" and self.sft_lr is not None:
            return self.sft_lr
        return self.lr

    @property
    def draft_name(self) -> str:
        if self.name:
            return self.name
        return BY_NAME[self.method].draft_name(self.layers)

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ScyllaError(f"unknown training option(s) {sorted(unknown)}")
        return cls(**raw)

    def save(self, path: Path) -> None:
        atomic_write_bytes(json.dumps(self.to_dict(), indent=2).encode(), path)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:  # ValueError: bad JSON, or bytes that are not UTF-8
            raise ScyllaError(f"cannot read training config {path}: {err}") from None


@dataclass(frozen=True)
class Budget:
    pretrain_tokens: int
    sft_tokens: int  # of chat: the target's own answers to ShareGPT prompts, prompts included
    epochs: int


# One token budget for every method, so the drafts compare at equal data. On the project's
# 2-core CPUs (bf16 native) the cost per token is the target's answers (~320 tokens/s, batches of
# 32), its features (~2000 tokens/s) and the draft's training (~1600 tokens/s for EAGLE-2, ~900 for
# Scylla-3, 3 unrolled steps), 4 min of answers and features once per target.
# At this scale the drafts are short of optimizer steps, not of data: passes over the same tokens
# buy what new tokens buy, without the target's answers and features. Measured on Scylla-1 (top-1
# agreement with the target on its own greedy answers to the last 16 prompts of MT-bench, HumanEval
# and GSM8K, teacher-forced, 5 unrolled depths; "sim" = sum over depths of the running product):
#   98k + 49k tokens, 2 passes, 4 sequences a step (the previous default): agreement 0.266, sim 0.361
#   the same, 4 passes, 2 sequences a step:                               agreement 0.305, sim 0.433
#   131k + 49k tokens, 1 pass, 4 a step / 2 a step / 1 a step:              sim 0.297 / 0.336 / 0.335
#   131k + 49k tokens, 2 passes / 4 passes (2 a step):                      sim 0.388 / 0.461
#   0 + 147k chat tokens, 1 pass (2 a step), the same data cost in answers: sim 0.343
# (A higher lr, a lower SFT lr, no feature noise, CE alone or 10x the CE weight moved sim by -0.01
# to +0.01; the target's last layer copied into the draft's as a start broke training: sim 0.01;
# its MLP alone, attention random, trailed the random start: EAGLE-2's held-out top-1 0.28 against
# 0.30 after 300 steps.)
# 4x the chat data at one pass (196k) lifted EAGLE-2's held-out agreement from 0.25 to 0.35-0.45
# but its agreement on the eval prompts' answers only from 0.23 to 0.25.
BUDGETS: dict[str, Budget] = {
    "default": Budget(pretrain_tokens=98_304, sft_tokens=49_152, epochs=4),
    # For the best tau a machine can reach; resumable (`scylla train --resume`). Past the default's
    # scale the drafts are short of the target's own answers: Scylla-1 trained on 262k of them
    # agreed with the target at depth 1 on 0.53 of positions of answers it was trained on, 0.44-0.50
    # of new SFT prompts' and 0.27-0.46 of the eval sets'. With 1M (the same 1M of pretraining,
    # one pass) the replay's tau with the 10-token tree (16 held-out prompts each, bf16, 2-core
    # EPYC) went 1.64 -> 1.80 (MT-bench), 1.86 -> 2.05 (HumanEval), 2.36 -> 2.59 (GSM8K), 2.21 ->
    # 2.45 (Alpaca), 2.53 -> 2.92 (unseen SFT prompts); with the 60-token tree 1.96 -> 2.17, 2.28 ->
    # 2.56, 3.03 -> 3.34, 2.63 -> 2.92, 3.34 -> 3.81; Scylla-3 the same within 0.03. Cost on that
    # EPYC: the answers 29 min (1.1M tokens at 477/s, once per target), features 9 min per 1M
    # tokens (once), training 24 min (Scylla-1), 26 (EAGLE-2), 33 (EAGLE-3) or 42 (Scylla-3).
    # At this budget the four are close: replay tau (24 held-out prompts, fp32) with the 10-token
    # tree Scylla-3 2.14, EAGLE-2 2.11, Scylla-1 2.10, EAGLE-3 2.06; 60-token 2.72, 2.63, 2.67, 2.56.
    "long": Budget(pretrain_tokens=1_048_576, sft_tokens=1_000_000, epochs=1),
}
RECIPE_NAMES = tuple(BUDGETS)

# Every method: a reduced vocabulary of the 8192 most frequent trained tokens (0.90 of the target's
# own answer tokens; the head then reads 4.7M weights instead of 28.3M), the CE on every position,
# 3 unrolled steps (the log's held-out accuracy at depths 4-5, never trained, matches depths 1-3),
# and SFT on the target's own answers.
DRAFT_VOCAB = 8192
# SFT prompts: half ShareGPT, a quarter each standard-library code completions and templated word
# problems (workloads/corpora/prompt_sources.py). Measured with EAGLE-3 at equal budget (49k SFT
# tokens, no pretraining, fp32, replay at T=0 on 8 first turns each): tau with the 10-token tree
# 1.25 -> 1.26 on MT-bench, 1.32 -> 1.39 on HumanEval, 1.25 -> 1.38 on GSM8K against ShareGPT alone.
SFT_MIX = {"sharegpt": 2.0, "code": 1.0, "math": 1.0}
_COMMON = dict(lr=1e-3, ttt_steps=3, ce_fraction=1.0, draft_vocab=DRAFT_VOCAB, sft_answers="target", sft_mix=SFT_MIX)


def recipe_fields() -> set[str]:
    """The fields a method's recipe sets (its defaults are the recipe's, not the dataclass's)."""
    fields = {*dataclasses.asdict(BUDGETS["default"]), *_COMMON}
    for method in METHOD_NAMES:
        fields |= set(dict(BY_NAME[method].recipe))
    return fields


def options() -> list[dataclasses.Field]:
    """TrainConfig's fields that are `scylla train` options, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if "option" in f.metadata]


def recipe(method: str, layers: int | None = None, budget: str = "default", **overrides) -> TrainConfig:
    """The recipe for `method` at the named budget ("default" or "long"), with any field overridden.
    EAGLE-2 as published: recipe("eagle2", draft_vocab=0, ttt_steps=1, sft_answers="sharegpt")."""
    if method not in METHOD_NAMES:
        raise ScyllaError(f"unknown draft method '{method}'; known: {', '.join(METHOD_NAMES)}")
    if budget not in BUDGETS:
        raise ScyllaError(f"unknown recipe '{budget}'; known: {', '.join(RECIPE_NAMES)}")
    size = BUDGETS[budget]
    values = dict(method=method, layers=layers, pretrain_tokens=size.pretrain_tokens, sft_tokens=size.sft_tokens,
                  epochs=size.epochs, **_COMMON)
    values.update(BY_NAME[method].recipe)  # what the method trains differently
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["sft_answers"] != "target" and overrides.get("sft_mix") is None:
        values["sft_mix"] = None  # only ShareGPT's prompts come with answers of their own
    if values["sft_mix"] is not None:
        values["sft_mix"] = dict(values["sft_mix"])  # the config's own, never the shared default
    return TrainConfig(**values)


def parse_shares(text: str, option: str) -> dict[str, float]:
    """'sharegpt=2,code=1' -> {"sharegpt": 2.0, "code": 1.0} (validated by TrainConfig)."""
    shares = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ScyllaError(f"{option}: '{part}' is not SOURCE=SHARE (example: sharegpt=2,code=1,math=1)")
    return shares


_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}


def parse_tokens(text: str | int) -> int:
    """'200k', '1.5M', '65536' -> tokens."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGbB]?)\s*", str(text))
    if not match:
        raise ScyllaError(f"not a token count: '{text}' (examples: 65536, 200k, 1.5M)")
    return int(round(float(match.group(1)) * _SUFFIX[match.group(2).lower()]))


__all__ = ["BUDGETS", "DRAFT_VOCAB", "METHOD_NAMES", "RECIPE_NAMES", "STAGES", "SFT_MIX", "Budget", "TrainConfig", "parse_shares", "parse_tokens", "recipe"]
