"""Which sequences each optimizer step trains on, and at what learning rate.

The whole run is fixed up front by the config and the stages' data: a resumed run is a step
counter into `Schedule.steps`, and every process computes the same global batch for a step
and takes its own share of it.
"""

import math
from dataclasses import dataclass, field

import torch

from scylla_impl.training.config import STAGES
from scylla_impl.training.data import StageData


def lr_at(step: int, total: int, peak: float, warmup_frac: float, min_ratio: float) -> float:
    """Linear warm-up to `peak`, then a cosine down to `min_ratio * peak` at the last step."""
    warmup = max(1, round(warmup_frac * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup + 1) / max(1, total - warmup)  # the last step lands on the floor
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class Step:
    data: StageData
    epoch: int
    index: int  # within the stage, over all its epochs


@dataclass
class Schedule:
    stages: list[StageData]
    batch_size: int
    epochs: int
    seed: int
    steps: list[Step] = field(init=False)  # every optimizer step of the run, in order

    def __post_init__(self) -> None:
        self.steps = [Step(data, s // (data.train_size // self.batch_size), s)
                      for data in self.stages for s in range(self.stage_steps(data))]

    def stage_steps(self, data: StageData) -> int:
        return self.epochs * (data.train_size // self.batch_size)

    def batch_rows(self, step: Step) -> torch.Tensor:
        """The global batch of `step`: the stage's training sequences (after its held-out ones)
        in a seeded order per epoch, the first epoch in order."""
        data = step.data
        gen = torch.Generator().manual_seed(self.seed * 1009 + step.epoch * 7 + STAGES.index(data.stage))
        n = data.train_size
        order = torch.randperm(n, generator=gen) if step.epoch > 0 else torch.arange(n)
        start = (step.index % (n // self.batch_size)) * self.batch_size
        return data.heldout + order[start:start + self.batch_size]

    def tokens(self, steps: list[Step]) -> dict[str, int]:
        """Tokens fed to the target by `steps`, per stage."""
        done = dict.fromkeys(STAGES, 0)
        for step in steps:
            done[step.data.stage] += self.batch_size * step.data.seq_len
        return done
