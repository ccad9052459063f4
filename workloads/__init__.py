"""Bottom layer: the six evaluation datasets, chat formatting, training corpora, fetched data.

    load_dataset("mt_bench")              -> list[Prompt] (79-80 records)
    dataset_info("mt_bench")              -> DatasetInfo: source, sha256, count, licence
    chat.prompt_token_ids(tok, prompt)    -> what the target is fed
    corpus("sft", tok, tokens, seq_len, seed) -> iterator of PackedSequence
"""

from workloads import chat
from workloads.chat import prompt_token_ids, render_chat, template_hash
from workloads.corpora import (
    DEFAULT_MIX,
    CorpusStream,
    PackedSequence,
    SourceReport,
    corpus,
    corpus_report,
)
from workloads.datasets import (
    DATA_DIR_VAR,
    DATASET_NAMES,
    DATASETS,
    DatasetSpec,
    dataset_info,
    load_dataset,
)
from workloads.errors import ScyllaError
from workloads.prompt import DatasetInfo, Prompt

__all__ = [
    "DATASETS", "DATASET_NAMES", "DATA_DIR_VAR", "DEFAULT_MIX", "CorpusStream", "DatasetInfo", "DatasetSpec",
    "PackedSequence", "Prompt", "ScyllaError", "SourceReport", "chat", "corpus", "corpus_report",
    "dataset_info", "load_dataset", "prompt_token_ids", "render_chat", "template_hash",
]
