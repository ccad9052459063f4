"""Draft training: EAGLE-2, EAGLE-3 and Scylla drafts for any target, pretraining then SFT.

    from scylla_impl.training import recipe, train
    result = train(recipe("scylla", layers=3, pretrain_tokens=65536), out="drafts/scylla-3")

config.py     TrainConfig and the default recipe per method
data.py       each stage's packed sequences, fixed up front (resume = a step counter)
features.py   target features, online or cached on disk
losses.py     unrolled (training-time test) losses and per-position accuracy
loop.py       optimizer, schedule, checkpoints, exact resume, Parquet log, progress
distributed.py  torchrun / torch.distributed (gloo on CPU)
"""

from scylla_impl.training.config import (
    METHOD_NAMES,
    TrainConfig,
    parse_shares,
    parse_tokens,
    recipe,
)
from scylla_impl.training.loop import TrainResult, checkpoints, train

__all__ = ["METHOD_NAMES", "TrainConfig", "TrainResult", "checkpoints", "parse_shares", "parse_tokens", "recipe", "train"]
