"""Training losses, unrolled the way decoding runs the draft.

Alignment (scylla_impl/drafts/base.py, decode.py): draft position t takes the pair
(token t+1, feature t) at rotary position t and predicts the target's feature and
distribution at t+1 (which predicts token t+2). Unrolled step k (training-time test) at
index t takes (token t+k+1, the draft's own output of step k-1 at t) at position t+k, and
attends, like a tree node, to the step-0 pairs up to t (features from the target) and to
its own chain's earlier steps at t; it is scored against the target at t+k+1.

Losses, per step k with weight step_decay**k:
  EAGLE-1/2 and Scylla: feature_weight * SmoothL1(out, target feature) + ce_weight * soft CE
      against the target's distribution; uniform noise on the target features fed in.
  EAGLE-3: soft CE against the target's distribution.
  A draft with a reduced vocabulary (any method) takes the CE over it, against the target's
  distribution restricted to it, at positions whose target argmax it holds (as EAGLE-3 does).
A position counts when the token it predicts is trained on (the loss mask). The CE (and the
accuracy) use a seeded random share `ce_fraction` of positions: the vocabulary head is most
of a CPU step's cost, and a sample of positions estimates the mean without bias.
Every random draw is seeded per sequence, so DDP ranks and resumed runs draw the same.
"""

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scylla_impl.training.features import target_logits


def sequence_seed(seed: int, stage: str, epoch: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{stage}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


class StepCache:
    """Keys and values of the unrolled steps so far, with gradients (a training-time cache)."""

    def __init__(self):
        self.keys: dict[int, list[torch.Tensor]] = {}
        self.values: dict[int, list[torch.Tensor]] = {}

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        self.keys.setdefault(layer, []).append(keys)
        self.values.setdefault(layer, []).append(values)
        return torch.cat(self.keys[layer], dim=2), torch.cat(self.values[layer], dim=2)


def step_mask(length: int, step: int, device) -> torch.Tensor:
    """[1, 1, L, (step+1)L] bool: causal over step 0, then each earlier step's same index."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return torch.cat([causal] + [eye] * step, dim=1)[None, None]


def unroll(draft, tokens: torch.Tensor, features: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Draft outputs [b, L, h] (L = T-1) for each unrolled step; `features` [b, L, F] feed step 0."""
    b, t = tokens.shape
    length = t - 1
    positions = torch.arange(length, device=tokens.device)
    cache = StepCache()
    outs, feed = [], features
    for k in range(steps):
        step_tokens = tokens[:, k + 1:k + 1 + length]
        if step_tokens.shape[1] < length:  # past the end: padding whose outputs are never scored
            step_tokens = F.pad(step_tokens, (0, length - step_tokens.shape[1]))
        out = draft.hidden_states(step_tokens, feed, k == 0, (positions + k).expand(b, length),
                                  step_mask(length, k, tokens.device), cache)
        outs.append(out)
        feed = out
    return outs


@dataclass
class StepLabels:
    valid: torch.Tensor  # [b, L] bool: the predicted token is trained on
    ce_index: torch.Tensor  # [n] flat indices into b*L of the sampled positions scored by the CE
    probs: torch.Tensor | None  # [n, V'] target distribution (draft vocabulary for EAGLE-3)
    argmax: torch.Tensor  # [n] target's top token (target ids)


@dataclass
class Batch:
    tokens: torch.Tensor  # [b, T]
    loss_mask: torch.Tensor  # [b, T] bool
    hidden: torch.Tensor  # [b, T, h] target's last hidden state
    features: torch.Tensor  # [b, T, F] what step 0 reads (hidden, or EAGLE-3's layer inputs)
    target_top1: torch.Tensor  # [b, T] the target's greedy next token at each position
    seeds: list[int]  # per sequence
    labels: list[StepLabels] | None = None



def make_labels(target, draft, batch: Batch, steps: int, ce_fraction: float, with_probs: bool,
                salt: int = 0) -> list[StepLabels]:
    """Which positions count at each step, and the target's distribution at the sampled ones."""
    b, t = batch.tokens.shape
    length = t - 1
    device = batch.tokens.device
    gens = [torch.Generator().manual_seed(s + 7919 * (salt + 1)) for s in batch.seeds]
    in_vocab = draft.t2d if draft.reduced else None
    vocab_ids = draft.draft_token_ids() if draft.reduced else None
    idx = torch.arange(length, device=device)
    chosen_by_step = []
    for k in range(steps):
        pred = idx + k + 2  # index of the token predicted at step k
        inside = pred <= t - 1
        valid = torch.zeros(b, length, dtype=torch.bool, device=device)
        valid[:, inside] = batch.loss_mask[:, pred[inside]]
        sample = torch.stack([torch.rand(length, generator=g) < ce_fraction for g in gens]).to(device)
        chosen_by_step.append((valid, (valid & sample).reshape(-1).nonzero().squeeze(1)))
    # Step k at index t is scored against the target at t + k + 1: the steps share most positions,
    # so the target head (the costliest matmul of a step) runs once per distinct position.
    wanted = [c // length * t + c % length + k + 1 for k, (_v, c) in enumerate(chosen_by_step)]
    positions = torch.unique(torch.cat(wanted)) if wanted else torch.zeros(0, dtype=torch.long, device=device)
    all_argmax = batch.target_top1.reshape(-1)[positions]  # [P] target ids (the features' source computed them)
    all_probs = None
    if with_probs:  # the target's distribution restricted to the draft's vocabulary, renormalised
        logits = target_logits(target, batch.hidden.reshape(b * t, -1)[positions], vocab_ids)  # [P, V']
        all_probs = torch.softmax(logits, dim=-1)
    out = []
    for (valid, chosen), flat in zip(chosen_by_step, wanted):
        rows = torch.searchsorted(positions, flat)  # [n] into the distinct positions
        if in_vocab is not None:  # a reduced vocabulary scores only positions it can get right (EAGLE-3)
            keep = in_vocab[all_argmax[rows]]
            chosen, rows = chosen[keep], rows[keep]
        probs = all_probs[rows] if all_probs is not None else None
        out.append(StepLabels(valid, chosen, probs, all_argmax[rows]))
    return out


def noise_like(features: torch.Tensor, seeds: list[int], width: float) -> torch.Tensor:
    if width <= 0:
        return features
    noise = torch.stack([(torch.rand(features.shape[1:], generator=torch.Generator().manual_seed(s)) - 0.5) * width
                         for s in seeds]).to(features.device, features.dtype)
    return features + noise


@dataclass
class Denominators:
    """Global counts per step (over every rank and micro-batch of the optimizer step)."""

    feature: list[float]  # positions x 1 (SmoothL1 is averaged over the hidden dims first)
    ce: list[float]


class UnrolledLoss(nn.Module):
    """The draft and its training loss in one forward, so DDP sees a normal module call."""

    def __init__(self, draft, config):
        super().__init__()
        self.draft = draft
        self.steps = config.ttt_steps
        self.decay = config.step_decay
        self.feature_weight = config.feature_weight if draft.regresses_features else 0.0
        self.ce_weight = config.ce_weight
        self.noise = config.noise

    def forward(self, batch: Batch, denom: Denominators, scale: float = 1.0):
        feats = noise_like(batch.features[:, :-1], batch.seeds, self.noise)
        outs = unroll(self.draft, batch.tokens, feats, self.steps)
        # Every parameter, the head's and its norm's included, is tied to the graph even when no
        # position of this batch is scored (a chat chunk with no assistant turn): backward then
        # gives zero gradients, and DDP ranks stay in step.
        total = self.draft.logits(outs[-1][:, :1]).float().sum() * 0.0
        stats = torch.zeros(self.steps, 4, dtype=torch.float64)  # feature sum, ce sum, correct, scored
        for k, (out, lab) in enumerate(zip(outs, batch.labels)):
            w = self.decay ** k
            if self.feature_weight and denom.feature[k] > 0:
                want = batch.hidden[:, k + 1:k + 1 + out.shape[1]]
                n = want.shape[1]
                err = F.smooth_l1_loss(out[:, :n], want, reduction="none").mean(-1)
                fsum = (err * lab.valid[:, :n]).sum()
                total = total + w * self.feature_weight * fsum / denom.feature[k]
                stats[k, 0] = fsum.detach().double()
            if lab.ce_index.numel() and denom.ce[k] > 0:
                picked = out.reshape(-1, out.shape[-1])[lab.ce_index]
                logq = torch.log_softmax(self.draft.logits(picked).float(), dim=-1)
                csum = -(lab.probs * logq).sum()
                total = total + w * self.ce_weight * csum / denom.ce[k]
                stats[k, 1] = csum.detach().double()
                stats[k, 2] = (self.draft.to_target(logq.argmax(-1)) == lab.argmax).sum().double()
                stats[k, 3] = lab.ce_index.numel()
        return total * scale, stats


@torch.no_grad()
def unrolled_accuracy(draft, batch: Batch, labels: list[StepLabels]) -> torch.Tensor:
    """[steps, 2] (correct, scored): top-1 agreement with the target at each unrolled step,
    the draft fed its own outputs as in decoding (no noise)."""
    outs = unroll(draft, batch.tokens, batch.features[:, :-1], len(labels))
    stats = torch.zeros(len(labels), 2, dtype=torch.float64)
    for k, (out, lab) in enumerate(zip(outs, labels)):
        if lab.ce_index.numel():
            picked = out.reshape(-1, out.shape[-1])[lab.ce_index]
            top = draft.to_target(draft.logits(picked).argmax(-1))
            stats[k] = torch.tensor([(top == lab.argmax).sum().item(), lab.ce_index.numel()])
    return stats


def simulated_acceptance(acc: list[float]) -> float:
    """Sum over k of the product of the per-position accuracies up to k: the expected number
    of draft tokens a chain of these accuracies gets accepted (tau ~ 1 + this)."""
    total, run = 0.0, 1.0
    for a in acc:
        run *= a
        total += run
    return total
