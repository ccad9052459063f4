"""Resume: a real training process is SIGKILLed mid-run; `scylla train --resume` continues from
its newest checkpoint and ends with exactly the weights and log of an uninterrupted run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file
from test_train import make_tiny

from scylla_impl.target import Target
from scylla_impl.training.config import CONFIG_FILE, TrainConfig
from scylla_impl.training.loop import KILL_AT_STEP_VAR, train
from scylla_impl.training.run_folder import checkpoints

SEQ = 32


def scylla_train(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness.cli", "train", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_killed_run_resumes_exactly(tmp_path, monkeypatch, default_model_dir):
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path / "home"))
    tiny = make_tiny(tmp_path / "tiny-llama", default_model_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(Path(m).read_text() for m in (subprocess.__file__, signal.__file__)))
    run = tmp_path / "run"
    args = ["--target", str(tiny), "--method", "eagle2", "--pretrain-data", str(text), "--no-decontaminate",
            "--pretrain-tokens", str(SEQ * 32), "--sft-tokens", "0", "--epochs", "1", "--seq-len", str(SEQ), "--batch-size", "4",
            "--micro-batch", "2", "--checkpoint-every", "3", "--log-every", "2", "--threads", "1",
            "--progress", "none", "--out", str(run)]
    killed = scylla_train(*args, env={KILL_AT_STEP_VAR: "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in checkpoints(run)] == ["step-000003"]
    assert not (run / "model.safetensors").exists()  # it never finished

    resumed = scylla_train("--resume", "--out", str(run), "--threads", "1", "--progress", "none")
    assert resumed.returncode == 0, resumed.stderr

    # The same run, never interrupted, in this process with the same thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig.load(run / CONFIG_FILE)
        train(config, tmp_path / "straight", target=Target.load(str(tiny), dtype=config.dtype), progress="none")
    finally:
        torch.set_num_threads(threads)
    got, want = load_file(run / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    log_got = pd.read_parquet(run / "train_log.parquet")
    log_want = pd.read_parquet(tmp_path / "straight" / "train_log.parquet")
    assert len(log_got) == len(log_want) == 8
    for column in ("loss", "loss_feature", "loss_ce", "lr", "grad_norm", "sim_accept", "tokens"):
        assert log_got[column].equals(log_want[column]), column
