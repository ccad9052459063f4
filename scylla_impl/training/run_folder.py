"""A training run's folder: what it holds, its checkpoints, and the checks before it is touched.

    out/config.json, model.safetensors   the finished draft (load_draft reads it)
    out/train_config.json                the run's TrainConfig
    out/train_log.parquet                one row per optimizer step
    out/checkpoints/step-NNNNNN/         a draft folder plus trainer.pt (optimizer, step, RNGs, log)

A checkpoint folder appears only once fully written, so a kill mid-save leaves the last one.
"""

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from scylla_impl.training.config import CONFIG_FILE, TrainConfig
from workloads.errors import ScyllaError
from workloads.files import atomic_write

LOG_FILE = "train_log.parquet"
STATE_FILE = "trainer.pt"
# Options a resumed run may change: where the target lives (its fingerprint is checked
# instead), the device, and how often it logs and checkpoints.
RESUME_MAY_CHANGE = ("target", "device", "checkpoint_every", "log_every", "keep_checkpoints")
# Everything a training run writes into its folder; `--force` removes these and nothing else.
RUN_ENTRIES = ("config.json", "model.safetensors", CONFIG_FILE, LOG_FILE, "checkpoints")
# ...and the temporaries of its atomic writes (workloads.files.temporary_name), left by a kill.
_RUN_TMP = re.compile(r"\.(" + "|".join(re.escape(n) for n in RUN_ENTRIES) + r")\.\d+\.tmp")


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder appears only once fully written)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())


def save_checkpoint(out: Path, step: int, draft, state: dict, keep: int) -> None:
    """Write `draft` and the trainer's `state` as checkpoint `step`, then drop all but the
    newest `keep`. Written to a temporary folder and renamed, so it appears whole or not at all."""
    root = out / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    state = {**state, "rng": _rng_state()}
    try:
        draft.save(tmp)
        atomic_write(tmp / STATE_FILE, lambda path: torch.save(state, path))
    except ScyllaError as err:  # a full disk (the writes say so): the last whole checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise ScyllaError(f"{err}; the last complete checkpoint is kept, and "
                          f"`scylla train --resume --out {out}` continues") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, draft, optimizer, target) -> dict:
    """Load the draft's weights and the optimizer's state from `folder`, restore every RNG, and
    return the trainer's counters: global_step, elapsed, tokens and the log rows so far."""
    from scylla_impl.drafts.base import check_target, load_weights, read_config

    check_target(read_config(folder), target, folder)
    load_weights(draft, folder)
    try:  # tensors, numbers, strings and containers only: a checkpoint can never run code
        state = torch.load(folder / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        return {key: state[key] for key in ("global_step", "elapsed", "tokens", "rows")}
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets one line
        raise ScyllaError(f"cannot resume from '{folder / STATE_FILE}': {str(err).splitlines()[0]} "
                          "(start over with --force, or train into another --out)") from None


def write_log(out: Path, rows: list[dict]) -> None:
    import pandas as pd

    atomic_write(out / LOG_FILE, lambda tmp: pd.DataFrame(rows).to_parquet(tmp, index=False))


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
