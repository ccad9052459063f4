"""Draft-training corpora: a general pretraining mix and ShareGPT chat SFT, both packed into
fixed-length sequences with loss masks, reproducible by seed, and decontaminated against the
six evaluation datasets.

    stream = corpus("sft", tokenizer, tokens=1_000_000, seq_len=2048, seed=0)
    for seq in stream: ...            # PackedSequence(input_ids, loss_mask, source)
    stream.stats                      # per source: documents, dropped, tokens, epochs
    corpus_report("pretrain", tokenizer)   # what is available offline, in tokens
"""

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workloads.chat import tokenize_conversation
from workloads.corpora import sharegpt
from workloads.corpora.decontaminate import Decontaminator, from_datasets
from workloads.corpora.packing import PackedSequence, pack
from workloads.corpora.prompt_sources import PROMPT_SOURCES, SFT_SOURCES
from workloads.corpora.streams import CorpusStream, SourceStats, document_stream
from workloads.corpora.text_sources import DEFAULT_MIX, TEXT_SOURCES, Document
from workloads.errors import ScyllaError
from workloads.progress import ProgressBar

__all__ = [
    "CORPUS_KINDS", "DEFAULT_MIX", "CorpusStream", "Decontaminator", "PackedSequence", "SourceReport",
    "SFT_SOURCES", "SourceStats", "check_shares", "corpus", "corpus_report", "pack", "sft_prompts",
]


@functools.lru_cache(maxsize=4)
def _decontaminator(data_dir: str | None) -> Decontaminator:
    return from_datasets(data_dir)


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ScyllaError("the tokenizer has no EOS token to separate packed documents")
    return int(tokenizer.eos_token_id)


def _text_tokenizer(tokenizer) -> Callable[[object, str], tuple[list[int], list[int]]]:
    eos = _eos(tokenizer)

    def tokenize(_doc, text: str) -> tuple[list[int], list[int]]:
        # verbose=False: whole files exceed model_max_length on purpose; packing cuts them.
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) + [eos]
        return ids, [1] * len(ids)  # pretraining learns every token, the separator included
    return tokenize


def check_shares(mix: dict[str, float], known: tuple[str, ...], what: str) -> dict[str, float]:
    """A mix of sources by share, normalised to sum to 1 with zero shares dropped; unknown
    sources and shares that are negative, not finite or all zero are errors naming `what`."""
    unknown = set(mix) - set(known)
    if unknown:
        raise ScyllaError(f"unknown {what} source(s) {sorted(unknown)} in mix; known: {', '.join(known)}")
    if not all(math.isfinite(r) and r >= 0 for r in mix.values()) or sum(mix.values()) <= 0:
        raise ScyllaError(f"{what} mix ratios must be non-negative and not all zero, got {mix}")
    total = sum(mix.values())
    return {name: r / total for name, r in mix.items() if r > 0}


def _pretrain(tokenizer, seed, stats, decontaminator, mix=None, **unused):
    _no_options(unused, "pretrain", "mix, decontaminate, data_dir")
    ratios = check_shares(dict(mix) if mix is not None else DEFAULT_MIX, tuple(TEXT_SOURCES), "corpus")
    tokenize = _text_tokenizer(tokenizer)
    streams = {}
    for name in ratios:
        stats[name] = SourceStats()
        docs: list[Document] = TEXT_SOURCES[name].documents()
        streams[name] = document_stream(name, docs, lambda d: d.id, lambda d: d.read(), tokenize,
                                        seed, stats[name], decontaminator)
    return streams, ratios


def _sft(tokenizer, seed, stats, decontaminator, system_prompt=None, conversations=None, **unused):
    _no_options(unused, "sft", "system_prompt, conversations, decontaminate, data_dir")
    if conversations is None:
        data = sharegpt.load()
        name, convs, ids = "sharegpt", data.conversations, data.ids
    else:  # given conversations (the target's own answers to ShareGPT prompts: self-distillation)
        name, convs, ids = "given", [list(c) for c in conversations], [str(i) for i in range(len(conversations))]
    stats[name] = SourceStats()
    stream = document_stream(
        name, list(range(len(convs))),
        lambda i: ids[i],
        lambda i: "\n\n".join(m["content"] for m in convs[i]),
        lambda i, _text: tokenize_conversation(tokenizer, convs[i], system_prompt),
        seed, stats[name], decontaminator,
    )
    return {name: stream}, {name: 1.0}


def sft_prompts(seed: int = 0, *, decontaminate: bool = True, data_dir: str | Path | None = None,
                mix: dict[str, float] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(id, [first user message]) of the prompts a target answers to make its own SFT data:
    ShareGPT's first user turns in a seeded order, interleaved with the code and math sources
    (prompt_sources.py) by the share of prompts `mix` gives each (None: ShareGPT alone);
    contaminated ones are left out. A source that runs out leaves the others to go on."""
    ratios = check_shares(mix if mix is not None else {"sharegpt": 1.0}, SFT_SOURCES, "SFT prompt")
    streams = {name: (_sharegpt_prompts(seed) if name == "sharegpt" else PROMPT_SOURCES[name].prompts(seed))
               for name in ratios}
    decon = _decontaminator(None if data_dir is None else str(data_dir)) if decontaminate else None
    taken = dict.fromkeys(ratios, 0)
    while streams:
        # Deficit rule: the source furthest below its share goes next.
        name = min(streams, key=lambda n: (taken[n] + 1) / ratios[n])
        item = next(streams[name], None)
        if item is None:
            del streams[name]
            continue
        taken[name] += 1
        pid, text = item
        if decon is not None and decon.contaminated(text):
            continue
        yield pid, [{"role": "user", "content": text}]


def _sharegpt_prompts(seed: int) -> Iterator[tuple[str, str]]:
    import random

    data = sharegpt.load()
    order = list(range(len(data.conversations)))
    random.Random(seed).shuffle(order)
    for i in order:
        first = next((m for m in data.conversations[i] if m["role"] == "user"), None)
        if first is not None:
            yield data.ids[i], first["content"]


def _no_options(unused: dict, kind: str, known: str) -> None:
    if unused:
        raise ScyllaError(f"unknown option(s) {sorted(unused)} for corpus '{kind}'; known: {known}")


CORPUS_KINDS = {"pretrain": _pretrain, "sft": _sft}


def corpus(kind: str, tokenizer, tokens: int, seq_len: int, seed: int = 0, *,
           decontaminate: bool = True, data_dir: str | Path | None = None, **options) -> CorpusStream:
    """Packed training sequences of `kind` ("pretrain" or "sft"): tokens // seq_len of them.

    pretrain options: mix={"web": .80, "curated": .15, "code": .05} (ratios of tokens).
    sft options: system_prompt (None: the template's own default); conversations (lists of
    messages to train on instead of ShareGPT's, e.g. the target's own answers).
    Decontamination checks every document against all six evaluation datasets (from data_dir
    or SCYLLA_DATA_DIR when given, and every packaged source); dropped ones are counted in
    `stream.stats[source].dropped`.
    """
    if kind not in CORPUS_KINDS:
        raise ScyllaError(f"unknown corpus '{kind}'; known: {', '.join(CORPUS_KINDS)}")
    if seq_len < 2:
        raise ScyllaError(f"seq_len must be at least 2, got {seq_len}")
    if tokens < seq_len:
        raise ScyllaError(f"a budget of {tokens} tokens holds no sequence of {seq_len}")
    decon = _decontaminator(None if data_dir is None else str(data_dir)) if decontaminate else None
    stats: dict[str, SourceStats] = {}
    streams, ratios = CORPUS_KINDS[kind](tokenizer, seed, stats, decon, **options)
    return CorpusStream(streams, ratios, seq_len, tokens // seq_len, stats)


@dataclass(frozen=True)
class SourceReport:
    kind: str
    name: str
    description: str
    license: str
    documents: int  # usable documents after decontamination
    dropped: int  # documents dropped as contaminated
    tokens: int  # tokens of the usable documents (separators and template tokens included)
    trained_tokens: int  # of which the loss mask trains on (all for pretrain; assistant turns for sft)


def corpus_report(kind: str, tokenizer, *, decontaminate: bool = True, data_dir: str | Path | None = None,
                  progress: bool | None = None) -> list[SourceReport]:
    """One full pass over what `kind` can draw on offline: documents, drops and token counts
    per source. Takes a minute or two (every document is tokenized), hence the progress bar."""
    if kind not in CORPUS_KINDS:
        raise ScyllaError(f"unknown corpus '{kind}'; known: {', '.join(CORPUS_KINDS)}")
    decon = _decontaminator(None if data_dir is None else str(data_dir)) if decontaminate else None
    reports = []
    if kind == "pretrain":
        tokenize = _text_tokenizer(tokenizer)
        for name, source in TEXT_SOURCES.items():
            docs, dropped, n_tokens = 0, 0, 0
            bar = ProgressBar("corpus", f"pretrain/{name}", unit="documents", rate_unit="doc", mode=progress)
            for doc in bar.iterate(source.documents()):
                text = doc.read()
                if not text.strip():
                    continue
                if decon is not None and decon.contaminated(text):
                    dropped += 1
                    continue
                docs += 1
                n_tokens += len(tokenize(doc, text)[0])
            bar.close()
            reports.append(SourceReport(kind, name, source.description, source.license, docs, dropped,
                                        n_tokens, n_tokens))
        return reports
    data = sharegpt.load()
    docs, dropped, n_tokens, trained = 0, 0, 0, 0
    bar = ProgressBar("corpus", "sft/sharegpt", len(data.conversations), unit="conversations", rate_unit="conv",
                      mode=progress)
    for conv in bar.iterate(data.conversations):
        if decon is not None and decon.contaminated("\n\n".join(m["content"] for m in conv)):
            dropped += 1
            continue
        ids, mask = tokenize_conversation(tokenizer, conv)
        docs += 1
        n_tokens += len(ids)
        trained += sum(mask)
    reports.append(SourceReport(kind, "sharegpt", f"ShareGPT conversations ({sharegpt.SHAREGPT_PKG.spec})",
                                "unspecified (ShareGPT user-shared ChatGPT conversations)", docs, dropped,
                                n_tokens, trained))
    bar.close()
    return reports
