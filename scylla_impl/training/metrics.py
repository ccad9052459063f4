"""The training log's numbers: a step's losses and accuracies from its summed counters, and the
held-out top-1 agreement per unrolled depth that says how the draft will fare in a tree."""

import math

import torch

from scylla_impl.training.config import TrainConfig
from scylla_impl.training.data import StageData
from scylla_impl.training.losses import Batch, make_labels, simulated_acceptance, unrolled_accuracy


def step_row(config: TrainConfig, feature_weight: float, step: int, data: StageData, epoch: int, lr: float,
             stats: torch.Tensor, counts: torch.Tensor, grad_norm: float) -> dict:
    """One log row. `stats` [ttt_steps, 4]: summed (feature loss, CE, correct, scored) per unrolled
    step over every rank; `counts` [2, ttt_steps]: positions scored by the feature loss and by CE.
    Each mean is over its own positions; `loss` weighs them as the optimizer did."""
    steps = range(config.ttt_steps)
    feat = [float(stats[k, 0] / counts[0, k]) if counts[0, k] and feature_weight else math.nan for k in steps]
    ce = [float(stats[k, 1] / counts[1, k]) if counts[1, k] else math.nan for k in steps]
    acc = [float(stats[k, 2] / counts[1, k]) if counts[1, k] else math.nan for k in steps]
    loss = sum(config.step_decay ** k * ((feature_weight * f if feature_weight and not math.isnan(f) else 0.0)
                                         + (config.ce_weight * c if not math.isnan(c) else 0.0))
               for k, (f, c) in enumerate(zip(feat, ce)))
    row = {"step": step, "stage": data.stage, "epoch": epoch, "lr": lr, "loss": loss,
           "loss_feature": feat[0], "loss_ce": ce[0], "grad_norm": grad_norm}
    for k in steps:
        row[f"train_acc_{k}"] = acc[k]
    for k in range(config.eval_steps):
        row[f"eval_acc_{k}"] = math.nan
    row["sim_accept"] = math.nan
    return row


def heldout_accuracy(config: TrainConfig, draft, target, features, data: StageData, dist) -> dict:
    """Per-position top-1 agreement with the target of the draft fed its own outputs (as in
    decoding), on the stage's held-out sequences, every position that has a label; each
    process takes its share of them."""
    draft.eval()
    stats = torch.zeros(config.eval_steps, 2, dtype=torch.float64)  # [depth, (correct, scored)]
    mine = torch.arange(data.heldout)[dist.rank::dist.world]
    for i in range(0, len(mine), config.micro_batch):
        rows = mine[i:i + config.micro_batch]
        hidden, layer_inputs, top1 = features.get(data, rows)
        batch = Batch(data.input_ids[rows].to(target.device), data.loss_mask[rows].to(target.device),
                      hidden, layer_inputs if layer_inputs is not None else hidden, top1, [0] * len(rows))
        labels = make_labels(target, draft, batch, config.eval_steps, 1.0, False)
        stats += unrolled_accuracy(draft, batch, labels)
    draft.train()
    stats = dist.all_sum(stats)
    acc = [float(c / n) if n else math.nan for c, n in stats.tolist()]
    out = {f"eval_acc_{k}": a for k, a in enumerate(acc)}
    out["sim_accept"] = simulated_acceptance([0.0 if math.isnan(a) else a for a in acc])
    return out
