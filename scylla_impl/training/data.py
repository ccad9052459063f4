"""The training data of a run, fixed up front: each stage's packed sequences as two tensors.

Materialising the token ids (4 bytes a token: a few MB for a CPU-sized budget) makes the data
position of a resumed run just the step counter, lets every DDP rank take its own slice of
the same global batch, and gives the feature cache a key (the digest of the ids).
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scylla_impl.training.config import TrainConfig
from workloads.chat import uses_fallback_template
from workloads.errors import ScyllaError, os_error


@dataclass
class StageData:
    stage: str
    input_ids: torch.Tensor  # [N, T] long
    loss_mask: torch.Tensor  # [N, T] bool: tokens the draft learns to predict
    sources: dict[str, dict] = field(default_factory=dict)  # per source: documents, tokens, epochs
    key: str = ""  # what decides the stream apart from the budget (corpus options, seed)
    # The first `heldout` sequences are never trained on: the log's accuracy is measured on them.
    # They lead the stream, so every budget of one stream holds out the same sequences.
    heldout: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def train_size(self) -> int:
        return len(self) - self.heldout

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def digest(self) -> str:
        h = hashlib.sha256(self.stage.encode())
        h.update(self.input_ids.to(torch.int32).numpy().tobytes())
        h.update(self.loss_mask.to(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


def stream_key(config: TrainConfig, stage: str) -> str:
    """Digest of everything that decides a stage's sequence stream except its length."""
    options = {"seed": config.seed, "seq_len": config.seq_len, "data_dir": config.data_dir,
               "decontaminate": config.decontaminate}
    if stage == "pretrain":
        options.update(mix=config.mix, pretrain_data=str(Path(config.pretrain_data).resolve()) if config.pretrain_data else None)
    else:
        options.update(system_prompt=config.system_prompt, sft_answers=config.sft_answers)
        if config.sft_mix is not None:  # absent when unset, so streams made before the option keep their key
            options.update(sft_mix=config.sft_mix)
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_chat_template(tokenizer, target_name: str) -> None:
    if uses_fallback_template(tokenizer):
        raise ScyllaError(f"target '{target_name}' has no chat template, so its chat (SFT) data cannot be "
                          "formatted as it will be prompted; train with --sft-tokens 0 or use an instruct model")


def build_stage(config: TrainConfig, tokenizer, stage: str, target_name: str = "target", target=None,
                progress: str = "none") -> StageData | None:
    """The packed sequences of `stage` for this config, or None for a zero budget: the stage's
    budget of training sequences after `config.eval_sequences` held-out ones. SFT on the
    target's own answers (config.sft_answers == "target") generates them with `target`."""
    if config.stage_tokens(stage) == 0:
        return None
    tokens = config.stage_tokens(stage) + config.eval_sequences * config.seq_len
    options = {}
    if stage == "sft":
        check_chat_template(tokenizer, target_name)
        if config.sft_answers == "target":
            from scylla_impl.training.answers import target_answers

            if target is None:
                raise ScyllaError("SFT on the target's own answers needs the target to generate them")
            options["conversations"] = target_answers(
                target, tokens, seed=config.seed, data_dir=config.data_dir, decontaminate=config.decontaminate,
                system_prompt=config.system_prompt, mix=config.sft_mix, progress=progress)
    if stage == "pretrain" and config.pretrain_data:
        stream = _text_corpus(config, tokenizer, tokens)
    else:
        from workloads import corpus

        if stage == "pretrain" and config.mix is not None:
            options["mix"] = config.mix
        if stage == "sft" and config.system_prompt is not None:
            options["system_prompt"] = config.system_prompt
        stream = corpus(stage, tokenizer, tokens, config.seq_len, config.seed, data_dir=config.data_dir,
                        decontaminate=config.decontaminate, **options)
    ids, masks = [], []
    for seq in stream:
        ids.append(seq.input_ids)
        masks.append(seq.loss_mask.bool())
        too_small = {n: s for n, s in stream.stats.items() if s.epochs > config.max_epochs_of_data}
        if too_small:
            name, stats = next(iter(too_small.items()))
            raise ScyllaError(
                f"the {stage} corpus is too small for --{stage}-tokens {config.stage_tokens(stage)} "
                f"(and {config.eval_sequences} held-out sequences): source '{name}' ran out after "
                f"{stats.tokens} tokens and would repeat; lower the budget"
                + (" or give more text" if stage == "pretrain" and config.pretrain_data else ""))
    data = StageData(stage, torch.stack(ids), torch.stack(masks),
                     {n: vars(s).copy() for n, s in stream.stats.items()}, stream_key(config, stage),
                     heldout=config.eval_sequences)
    if not data.loss_mask[:, 2:].any():
        raise ScyllaError(f"the {stage} data has no tokens to learn (empty loss mask)")
    return data


def _text_corpus(config: TrainConfig, tokenizer, tokens: int):
    """Plain text from a file or a folder of .txt/.md files, packed like the default corpus."""
    from workloads.corpora.decontaminate import from_datasets
    from workloads.corpora.streams import CorpusStream, SourceStats, document_stream

    root = Path(config.pretrain_data).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    else:
        raise ScyllaError(f"pretrain data '{root}' not found")
    if not files:
        raise ScyllaError(f"pretrain data '{root}' holds no .txt or .md files")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ScyllaError("the tokenizer has no EOS token to separate packed documents")

    def tokenize(_path, text):
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) + [eos]
        return ids, [1] * len(ids)

    stats = {"text": SourceStats()}
    decontaminator = from_datasets(config.data_dir) if config.decontaminate else None
    stream = document_stream("text", files, str, _read_text, tokenize, config.seed, stats["text"], decontaminator)
    return CorpusStream({"text": stream}, {"text": 1.0}, config.seq_len, tokens // config.seq_len, stats)


def _read_text(path: Path) -> str:
    """A pretraining file as text; binary or non-UTF-8 bytes would train the draft on noise."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ScyllaError(f"pretrain data {path}: not UTF-8 text (byte {err.start}); convert it to UTF-8 "
                          "or leave it out") from None
    except OSError as err:
        raise os_error(err, "read pretrain data", path) from None


def token_counts(stages: list[StageData], vocab_size: int) -> torch.Tensor:
    """How often each token is learned (loss mask on) across the stages: EAGLE-3's vocabulary."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for data in stages:
        ids, mask = data.input_ids[data.heldout:], data.loss_mask[data.heldout:]
        counts += torch.bincount(ids[mask], minlength=vocab_size)[:vocab_size]
    return counts
