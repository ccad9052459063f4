"""The training loop: two stages, AdamW, warm-up + cosine, checkpoints, exact resume, a log.

    result = train(recipe("scylla", layers=3), out=Path("drafts/scylla-3"))

A run folder holds the finished draft (config.json + model.safetensors, loadable with
load_draft), train_config.json, train_log.parquet and checkpoints/step-NNNNNN/ (a draft
folder plus trainer.pt: optimizer, step, RNG states, log so far). The data order is fixed
by the seed and every random draw is seeded per sequence, so `resume=True` continues from
the newest checkpoint to the same weights an uninterrupted run reaches.
"""

import contextlib
import dataclasses
import math
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from scylla_impl.precision import fast_dtype
from scylla_impl.training import distributed
from scylla_impl.training.config import STAGES, TrainConfig
from scylla_impl.training.data import StageData, build_stage, token_counts
from scylla_impl.training.features import feature_source
from scylla_impl.training.losses import (
    Batch,
    Denominators,
    UnrolledLoss,
    make_labels,
    sequence_seed,
    simulated_acceptance,
    unrolled_accuracy,
)
from workloads.errors import ScyllaError
from workloads.files import atomic_write, check_writable_folder
from workloads.progress import ProgressBar, resolve_mode

CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.parquet"
STATE_FILE = "trainer.pt"
# Fault injection for the resume test: the process SIGKILLs itself after this optimizer step.
KILL_AT_STEP_VAR = "SCYLLA_TRAIN_KILL_AT_STEP"
# Options a resumed run may change: where the target lives (its fingerprint is checked
# instead), the device, and how often it logs and checkpoints.
RESUME_MAY_CHANGE = ("target", "device", "checkpoint_every", "log_every", "keep_checkpoints")


@dataclass
class TrainResult:
    out: Path
    steps: int
    tokens: int  # tokens fed to the target (all stages and epochs)
    seconds: float  # wall time of this run's steps, resumed parts included
    feature_seconds: float  # of which building the feature cache took
    final: dict = field(default_factory=dict)  # the last logged metrics


# -- schedule ----------------------------------------------------------------------------
def lr_at(step: int, total: int, peak: float, warmup_frac: float, min_ratio: float) -> float:
    warmup = max(1, round(warmup_frac * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup + 1) / max(1, total - warmup)  # the last step lands on the floor
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _rng_state() -> dict:
    """Every RNG the run draws from, as plain tensors, ints and lists: `torch.load(weights_only=True)`
    reads them back, so resuming never unpickles objects."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# -- run folder --------------------------------------------------------------------------
# Everything a training run writes into its folder; `--force` removes these and nothing else.
RUN_ENTRIES = ("config.json", "model.safetensors", CONFIG_FILE, LOG_FILE, "checkpoints")
# ...and the temporaries of its atomic writes (workloads.files.temporary_name), left by a kill.
_RUN_TMP = re.compile(r"\.(" + "|".join(re.escape(n) for n in RUN_ENTRIES) + r")\.\d+\.tmp")


def clear_run(out: Path, dry_run: bool = False) -> None:
    """Start `out` over: remove what a training run wrote there, after checking that it is one.
    A folder holding anything else is refused whole, so nothing of the user's is ever deleted."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ScyllaError(f"--out '{out}' is a file, not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if name not in RUN_ENTRIES and not _RUN_TMP.fullmatch(name)]
    if foreign:
        raise ScyllaError(f"--force refuses to clear '{out}': it holds {', '.join(foreign[:3])}"
                          f"{' and more' if len(foreign) > 3 else ''}, which a training run does not write; "
                          "choose another --out or empty it yourself")
    if entries and CONFIG_FILE not in entries and "config.json" not in entries:
        raise ScyllaError(f"--force refuses to clear '{out}': it is not a training run folder (no {CONFIG_FILE})")
    if dry_run:
        return
    for name in entries:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder appears only once fully written)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())


def _train_target(target):
    """What the draft is built on: the target's frozen embedding and head in fp32, so the draft's
    weights (and Adam's moments) are fp32 whatever precision the target runs in."""
    if target.dtype == torch.float32:
        return target
    embed = torch.nn.Embedding.from_pretrained(target.embed.weight.detach().float(), freeze=True)
    head = torch.nn.Linear(target.lm_head.in_features, target.lm_head.out_features,
                           bias=target.lm_head.bias is not None).to(target.device)
    head.weight = torch.nn.Parameter(target.lm_head.weight.detach().float(), requires_grad=False)
    if head.bias is not None:
        head.bias = torch.nn.Parameter(target.lm_head.bias.detach().float(), requires_grad=False)
    return SimpleNamespace(model=target.model, info=target.info, device=target.device, dtype=torch.float32,
                           embed=embed.to(target.device), lm_head=head)


def _final_norm_weight(target) -> torch.Tensor | None:
    norm = getattr(target.decoder, "norm", None)  # architectures without a final RMSNorm weight have none
    weight = getattr(norm, "weight", None)
    return weight.detach().float() if weight is not None else None


@torch.no_grad()
def init_head_from_target(draft, target) -> None:
    """Start EAGLE-3's own head where EAGLE-2 and Scylla start theirs: the target's LM head
    (its rows for the draft vocabulary) behind the target's final norm weights. It is still
    trained; at CPU-sized budgets a head learned from scratch would cost most of the budget
    before the comparison is about the drafts' bodies."""
    draft.lm_head.weight.copy_(target.lm_head.weight[draft.draft_token_ids()].float())
    weight = _final_norm_weight(target)
    if weight is not None:
        draft.norm.weight.copy_(weight)


@torch.no_grad()
def init_scylla_norm(draft, target) -> None:
    """Scylla's pre-head norm starts as the identity on its regression target. The draft regresses
    onto the target's post-norm hidden state h = g * x / rms(x), whose RMS is about rms(g)
    (1.83 on SmolLM2-135M); a unit norm weight would hand the head logits at about half scale,
    flattening the scores that rank the tree, and few optimizer steps could not undo it."""
    weight = _final_norm_weight(target)
    if weight is not None:
        draft.norm.weight.fill_(float(weight.pow(2).mean().sqrt()))


class _Progress:
    """The run's display: a bar per stage (features) and one for the whole run, with the loss and
    held-out acceptance beside the bar, or as a line at each evaluation off a terminal."""

    def __init__(self, mode: str, enabled: bool):
        self.mode = resolve_mode(mode) if enabled else "none"
        self.bar = None

    def stage_bar(self, desc: str, total: int, initial: int = 0) -> ProgressBar:
        return ProgressBar("train", desc, total, unit="tokens", rate_unit="tok", mode=self.mode, initial=initial)

    def start(self, total: int, done: int) -> None:
        self.bar = self.stage_bar("train", total, done)

    def step(self, tokens: int, row: dict) -> None:
        post = {}
        if self.mode == "bar":
            post = {"tok/s": f"{row['tokens_per_s']:.0f}", "loss": f"{row['loss']:.3f}"}
            accs = [row.get(f"eval_acc_{k}") for k in range(8)]
            accs = [a for a in accs if a is not None and not math.isnan(a)]
            if accs:
                post["acc"] = "/".join(f"{a:.2f}" for a in accs[:5])
                post["sim"] = f"{row['sim_accept']:.2f}"
        self.bar.update(tokens, **post)
        if self.mode == "lines" and not math.isnan(row.get("sim_accept", math.nan)):
            accs = " ".join(f"{row[f'eval_acc_{k}']:.3f}" for k in range(8) if f"eval_acc_{k}" in row)
            self.bar.write(f"[train] step {row['step']} {row['stage']} loss {row['loss']:.4f} acc {accs} "
                           f"sim {row['sim_accept']:.3f} lr {row['lr']:.2e} tok/s {row['tokens_per_s']:.1f} "
                           f"elapsed {row['elapsed_s']:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    def __init__(self, config: TrainConfig, target, out: Path, dist, progress: str = "auto"):
        self.config, self.target, self.out, self.dist = config, target, out, dist
        self.progress = _Progress(progress, dist.main)
        target.model.requires_grad_(False)
        self.stages: list[StageData] = []
        for stage in STAGES:
            # The target's answers are generated by the first process; the others wait for them
            # and then read them from the cache.
            generated = stage == "sft" and config.sft_answers == "target" and dist.enabled
            if generated and not dist.main:
                dist.barrier()
            data = build_stage(config, target.tokenizer, stage, target.info.name, target=target,
                               progress=self.progress.mode)
            if generated and dist.main:
                dist.barrier()
            if data is not None:
                self.stages.append(data)
        from scylla_impl.drafts import new_draft

        self.draft = new_draft(config.method, _train_target(target), layers=config.layers, seed=config.seed,
                               draft_vocab=config.draft_vocab)
        if self.draft.reduced:
            self.draft.set_vocab(token_counts(self.stages, target.info.vocab_size))
        if self.draft.own_head and config.head_from_target:
            init_head_from_target(self.draft, target)
        if self.draft.norm_before_target_head:
            init_scylla_norm(self.draft, target)
        self.draft.train()
        self.loss = UnrolledLoss(self.draft, config)
        self.model = dist.wrap(self.loss)
        params = [p for p in self.draft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay)
        from scylla_impl.target import default_layer_choice

        store = default_layer_choice(target.info.num_layers) if config.features == "cache" else ()
        self.features = feature_source(config.features, target, self.draft.feature_layers, store,
                                       batch=config.micro_batch)
        device_type = torch.device(target.device).type
        use_bf16 = config.autocast == "bf16" or (config.autocast == "auto"
                                                 and fast_dtype(str(target.device)) == "bfloat16")
        self.autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        self.steps = self.plan()  # every optimizer step of the run, fixed by the config and data
        self.global_step = 0
        self.elapsed = 0.0
        self.tokens = 0
        self.rows: list[dict] = []

    # -- plan -------------------------------------------------------------------------
    def stage_steps(self, data: StageData) -> int:
        return self.config.epochs * (data.train_size // self.config.batch_size)

    def plan(self) -> list[tuple[StageData, int, int]]:
        """(stage data, epoch, step within the stage) for every optimizer step of the run."""
        steps = []
        for data in self.stages:
            per_epoch = data.train_size // self.config.batch_size
            for s in range(self.stage_steps(data)):
                steps.append((data, s // per_epoch, s))
        return steps

    def batch_rows(self, data: StageData, epoch: int, step: int) -> torch.Tensor:
        """The global batch of this step: the stage's sequences in a seeded order per epoch."""
        gen = torch.Generator().manual_seed(self.config.seed * 1009 + epoch * 7 + STAGES.index(data.stage))
        n = data.train_size
        order = torch.randperm(n, generator=gen) if epoch > 0 else torch.arange(n)
        per_epoch = n // self.config.batch_size
        b = self.config.batch_size
        start = (step % per_epoch) * b
        return data.heldout + order[start:start + b]

    # -- one step ---------------------------------------------------------------------
    def _micro_batches(self, data: StageData, epoch: int, rows: torch.Tensor) -> list[Batch]:
        """This process's share of the global batch `rows`, in micro-batches, with features."""
        cfg, dist = self.config, self.dist
        share = cfg.batch_size // dist.world
        mine = rows[dist.rank * share:(dist.rank + 1) * share]
        batches = []
        dev = self.target.device
        for i in range(0, len(mine), cfg.micro_batch):
            part = mine[i:i + cfg.micro_batch]
            hidden, layer_inputs = self.features.get(data, part)
            seeds = [sequence_seed(cfg.seed, data.stage, epoch, int(r)) for r in part]
            batches.append(Batch(data.input_ids[part].to(dev), data.loss_mask[part].to(dev), hidden,
                                 layer_inputs if layer_inputs is not None else hidden, seeds))
        return batches

    def step(self, data: StageData, epoch: int, step: int, total_steps: int) -> dict:
        cfg, dist = self.config, self.dist
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, cfg.stage_lr(data.stage), cfg.warmup_frac, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows = self.batch_rows(data, epoch, step)
        batches = self._micro_batches(data, epoch, rows)
        for batch in batches:
            batch.labels = make_labels(self.target, self.draft, batch, cfg.ttt_steps, cfg.ce_fraction, True)
        counts = torch.zeros(2, cfg.ttt_steps, dtype=torch.float64)
        for batch in batches:
            for k, lab in enumerate(batch.labels):
                n = batch.tokens.shape[1] - 1 - k
                counts[0, k] += lab.valid[:, :n].sum().item()
                counts[1, k] += lab.ce_index.numel()
        counts = dist.all_sum(counts)
        denom = Denominators(counts[0].tolist(), counts[1].tolist())
        stats = torch.zeros(cfg.ttt_steps, 4, dtype=torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not dist.enabled
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                with self.autocast:
                    loss, part = self.model(batch, denom, float(dist.world))
                loss.backward()
            stats += part
        grad_norm = torch.nn.utils.clip_grad_norm_(self.draft.parameters(), cfg.clip)
        self.optimizer.step()
        stats = dist.all_sum(stats)
        row = self._row(data, epoch, lr, stats, counts, float(grad_norm))
        if (self.global_step + 1) % cfg.log_every == 0 or self.global_step + 1 == len(self.steps):
            row.update(self._eval_metrics(data))
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        self.tokens += len(rows) * data.seq_len
        row.update(tokens=self.tokens, tokens_per_s=len(rows) * data.seq_len / seconds, elapsed_s=self.elapsed)
        return row

    def _row(self, data, epoch, lr, stats, counts, grad_norm) -> dict:
        cfg = self.config
        feat = [float(stats[k, 0] / counts[0, k]) if counts[0, k] and self.loss.feature_weight else math.nan
                for k in range(cfg.ttt_steps)]
        ce = [float(stats[k, 1] / counts[1, k]) if counts[1, k] else math.nan for k in range(cfg.ttt_steps)]
        acc = [float(stats[k, 2] / counts[1, k]) if counts[1, k] else math.nan for k in range(cfg.ttt_steps)]
        fw = self.loss.feature_weight
        loss = sum(cfg.step_decay ** k * ((fw * f if fw and not math.isnan(f) else 0.0)
                                          + (cfg.ce_weight * c if not math.isnan(c) else 0.0))
                   for k, (f, c) in enumerate(zip(feat, ce)))
        row = {"step": self.global_step + 1, "stage": data.stage, "epoch": epoch, "lr": lr, "loss": loss,
               "loss_feature": feat[0], "loss_ce": ce[0], "grad_norm": grad_norm}
        for k in range(cfg.ttt_steps):
            row[f"train_acc_{k}"] = acc[k]
        for k in range(cfg.eval_steps):
            row[f"eval_acc_{k}"] = math.nan
        row["sim_accept"] = math.nan
        return row

    def _eval_metrics(self, data: StageData) -> dict:
        """Per-position top-1 agreement with the target of the draft fed its own outputs (as in
        decoding), on the stage's held-out sequences, every position that has a label; each
        process takes its share of them."""
        cfg = self.config
        self.draft.eval()
        stats = torch.zeros(cfg.eval_steps, 2, dtype=torch.float64)
        mine = torch.arange(data.heldout)[self.dist.rank::self.dist.world]
        for i in range(0, len(mine), cfg.micro_batch):
            rows = mine[i:i + cfg.micro_batch]
            hidden, layer_inputs = self.features.get(data, rows)
            batch = Batch(data.input_ids[rows].to(self.target.device), data.loss_mask[rows].to(self.target.device),
                          hidden, layer_inputs if layer_inputs is not None else hidden, [0] * len(rows))
            labels = make_labels(self.target, self.draft, batch, cfg.eval_steps, 1.0, False)
            stats += unrolled_accuracy(self.draft, batch, labels)
        self.draft.train()
        stats = self.dist.all_sum(stats)
        acc = [float(c / n) if n else math.nan for c, n in stats.tolist()]
        out = {f"eval_acc_{k}": a for k, a in enumerate(acc)}
        out["sim_accept"] = simulated_acceptance([0.0 if math.isnan(a) else a for a in acc])
        return out

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.dist.main:
            root = self.out / "checkpoints"
            final = root / f"step-{self.global_step:06d}"
            tmp = root / f".tmp-step-{self.global_step:06d}"
            shutil.rmtree(tmp, ignore_errors=True)
            self._stamp_budget()
            state = {
                "global_step": self.global_step, "elapsed": self.elapsed, "tokens": self.tokens,
                "optimizer": self.optimizer.state_dict(), "rows": self.rows,
                "rng": _rng_state(),
            }
            try:
                self.draft.save(tmp)
                atomic_write(tmp / STATE_FILE, lambda path: torch.save(state, path))
            except ScyllaError as err:  # a full disk (the writes say so): the last whole checkpoint stays
                shutil.rmtree(tmp, ignore_errors=True)
                raise ScyllaError(f"{err}; the last complete checkpoint is kept, and "
                                  f"`scylla train --resume --out {self.out}` continues") from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoints(self.out)[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self._write_log()
        self.dist.barrier()

    def load_checkpoint(self, folder: Path) -> None:
        from scylla_impl.drafts.base import check_target, load_weights, read_config

        check_target(read_config(folder), self.target, folder)
        load_weights(self.draft, folder)
        try:  # tensors, numbers, strings and containers only: a checkpoint can never run code
            state = torch.load(folder / STATE_FILE, weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.global_step, self.elapsed, self.tokens = state["global_step"], state["elapsed"], state["tokens"]
            self.rows = state["rows"]
            _set_rng_state(state["rng"])
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets one line
            raise ScyllaError(f"cannot resume from '{folder / STATE_FILE}': {str(err).splitlines()[0]} "
                              "(start over with --force, or train into another --out)") from None

    def _stamp_budget(self) -> None:
        """Record in the draft's config how many tokens each stage has trained so far."""
        done = {"pretrain": 0, "sft": 0}
        for data, _epoch, _step in self.steps[:self.global_step]:
            done[data.stage] += self.config.batch_size * data.seq_len
        self.draft.config.pretrain_tokens = done["pretrain"]
        self.draft.config.sft_tokens = done["sft"]

    def _write_log(self) -> None:
        import pandas as pd

        atomic_write(self.out / LOG_FILE, lambda tmp: pd.DataFrame(self.rows).to_parquet(tmp, index=False))

    # -- run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.config
        plan = self.steps
        if not plan:
            raise ScyllaError("the budget makes no full batch: raise the token budgets or lower --batch-size")
        kill_at = int(os.environ.get(KILL_AT_STEP_VAR, "0") or 0)
        end = 0
        for data in self.stages:
            end += self.stage_steps(data)
            if self.global_step < end:  # a stage a resumed run has finished needs no features
                self.features.prepare(data, self.dist, self.progress.stage_bar if self.dist.main else None)
        done_tokens = sum(self.config.batch_size * d.seq_len for d, _e, _s in plan[:self.global_step])
        self.progress.start(sum(self.config.batch_size * d.seq_len for d, _e, _s in plan), done_tokens)
        try:
            while self.global_step < len(plan):
                data, epoch, step = plan[self.global_step]
                row = self.step(data, epoch, step, self.stage_steps(data))
                self.rows.append(row)
                self.global_step += 1
                self.progress.step(len(self.batch_rows(data, epoch, step)) * data.seq_len, row)
                if self.global_step % cfg.checkpoint_every == 0 and self.global_step < len(plan):
                    self.save_checkpoint()
                if kill_at and self.global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            self.progress.close()
        self.save_checkpoint()
        if self.dist.main:
            self._stamp_budget()
            self.draft.save(self.out)
        self.dist.barrier()
        final = next((r for r in reversed(self.rows) if not math.isnan(r.get("sim_accept", math.nan))), {})
        return TrainResult(self.out, self.global_step, self.tokens, self.elapsed,
                           self.features.build_s, final)


def _differences(previous: TrainConfig, config: TrainConfig) -> dict:
    now = config.to_dict()
    return {k: (v, now[k]) for k, v in previous.to_dict().items() if now[k] != v and k not in RESUME_MAY_CHANGE}


def same_run(out: Path, config: TrainConfig) -> bool:
    """Whether the run in `out` was started with `config` (up to what a resume may change)."""
    return not _differences(TrainConfig.load(out / CONFIG_FILE), config)


def prepare_out(out: Path, config: TrainConfig | None, resume: bool, target_fingerprint: str,
                force: bool = False) -> tuple[TrainConfig, Path | None]:
    """The config to run and the checkpoint to resume from, with clear errors for a wrong folder.
    Only checks: nothing on disk changes here."""
    from scylla_impl.drafts.base import read_config

    saved = out / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise ScyllaError(f"nothing to resume in '{out}': it holds no {CONFIG_FILE}")
        previous = TrainConfig.load(saved)
        if config is not None:
            diff = _differences(previous, config)
            if diff:
                name, (was, now) = next(iter(diff.items()))
                raise ScyllaError(f"'{out}' was started with {name}={was!r}, not {now!r}; resume it with the same "
                                  "options (or none) or train into another --out")
        found = checkpoints(out)
        folder = found[-1] if found else None
        probe = folder or (out if (out / "config.json").is_file() else None)
        if probe is not None:
            cfg = read_config(probe)
            if cfg.target_fingerprint != target_fingerprint:
                raise ScyllaError(f"draft '{probe}' was trained for target '{cfg.target_name}' "
                                  f"(fingerprint {cfg.target_fingerprint}), not this one ({target_fingerprint}); "
                                  "cannot resume it")
        return (config or previous), folder
    if config is None:
        raise ScyllaError("a training config is needed unless resuming")
    if out.exists() and not out.is_dir():
        raise ScyllaError(f"--out '{out}' is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ScyllaError(f"'{out}' already holds a training run or draft; pass --resume to continue it, "
                              "--force to start over, or choose another --out")
        clear_run(out, dry_run=True)  # --force: refuse now a folder that is not a run of ours
    return config, None


def train(config: TrainConfig | None, out: Path | str | None = None, *, resume: bool = False, force: bool = False,
          target=None, progress: str = "auto") -> TrainResult:
    """Train a draft per `config` into `out` (default: drafts_dir(target)/<config.draft_name>).
    Under torchrun every process calls this; each takes its share of every global batch."""
    from scylla_impl.target import Target

    dist = distributed.init(config.device if config else "cpu")
    try:
        if target is None:
            if config is None:
                raise ScyllaError("train needs a config or a target to resume")
            target = Target.load(config.target, dtype=config.dtype,
                                 device=distributed.device_for(dist, config.device))
        elif config is not None:  # the config records the precision the features really come from
            config = dataclasses.replace(config, dtype=str(target.dtype).removeprefix("torch."))
        if out is None:
            from scylla_impl.trained import drafts_dir

            if config is None:
                raise ScyllaError("give --out to resume a run")
            out = drafts_dir(target) / config.draft_name
        out = Path(out)
        check_writable_folder(out, "--out")
        # Every process checks (the same answer everywhere, so a bad folder stops them all);
        # only the first one changes the folder.
        run_config, folder = prepare_out(out, config, resume, target.info.fingerprint, force)
        if run_config.batch_size % dist.world:
            raise ScyllaError(f"batch size {run_config.batch_size} does not split over {dist.world} processes")
        # Building the trainer reads and checks every input (corpora, chat template, budgets);
        # only then is anything on disk changed.
        trainer = Trainer(run_config, target, out, dist, progress)
        dist.barrier()
        if dist.main and force and not resume:
            clear_run(out)
        dist.barrier()
        if folder is not None:
            trainer.load_checkpoint(folder)
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            if not (out / CONFIG_FILE).is_file():
                run_config.save(out / CONFIG_FILE)
        dist.barrier()
        return trainer.run()
    finally:
        dist.close()
