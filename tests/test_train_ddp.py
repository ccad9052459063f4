"""DDP: two gloo processes under torchrun (on one node, or as two nodes joined by c10d
rendezvous), the same global batch split between them, follow the loss curve of one process
(gradient accumulation over the same sequences) within tolerance, for every trained method: a
reduced vocabulary, unrolled steps, and SFT on the target's own answers (which one process
generates while the other waits)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from test_train import make_tiny

from scylla_impl.methods import TRAINED

SEQ = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nodes: str, out: Path, common: list[str], env: dict) -> None:
    """`torchrun` as a user starts it: 2 processes on one node, or 2 nodes of one process each
    joining by c10d rendezvous (two launchers, here on one machine, as on two)."""
    if nodes == "one node":
        launchers = [["--standalone", "--nproc-per-node", "2"]]
    else:
        rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "ddp-test"]
        launchers = [rdzv, rdzv]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args, "-m", "harness.cli", *common,
                               "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in launchers]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]


# Each method's DDP run takes about a minute on 2 cores: Scylla's (deepest draft, CE-dependent
# norm and head) stays in the fast suite, the others and two nodes run in `nox -s slow`.
@pytest.mark.parametrize(("method", "nodes"), [
    *((m, "one node") if m == "scylla" else pytest.param(m, "one node", marks=pytest.mark.slow) for m in TRAINED),
    pytest.param("scylla", "two nodes", marks=pytest.mark.slow)])
def test_two_gloo_processes_match_one(method, nodes, tmp_path, default_model_dir):
    tiny = make_tiny(tmp_path / "tiny-llama", default_model_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(Path(m).read_text() for m in (subprocess.__file__, os.__file__)))
    common = ["train", "--target", str(tiny), "--method", method, *(["--layers", "2"] if method == "scylla" else []),
              "--pretrain-data", str(text), "--no-decontaminate", "--pretrain-tokens", str(SEQ * 24),
              "--sft-tokens", str(SEQ * 8), "--sft-answers", "target", "--draft-vocab", "2048", "--ttt-steps", "2",
              "--epochs", "1", "--seq-len", str(SEQ), "--batch-size", "4", "--micro-batch", "2", "--log-every", "2",
              "--threads", "1", "--progress", "none"]
    # Separate homes: the two-process run builds its feature cache split between the ranks.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "harness.cli", *common, "--out", str(tmp_path / "one")],
                          capture_output=True, text=True, timeout=600, env={**env, "SCYLLA_HOME": str(tmp_path / "h1")})
    assert done.returncode == 0, done.stderr[-3000:]
    launch(nodes, tmp_path / "two", common, {**env, "SCYLLA_HOME": str(tmp_path / "h2")})
    one = pd.read_parquet(tmp_path / "one" / "train_log.parquet")
    two = pd.read_parquet(tmp_path / "two" / "train_log.parquet")
    assert len(one) == len(two) == 8 and list(one["stage"]) == ["pretrain"] * 6 + ["sft"] * 2
    assert one["loss"].iloc[-1] < one["loss"].iloc[0]  # it learned something, so the curve means something
    for column in ("loss", "loss_ce", "grad_norm", *(["loss_feature"] if method != "eagle3" else [])):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4, atol=1e-6, err_msg=column)
    np.testing.assert_allclose(two["sim_accept"].dropna(), one["sim_accept"].dropna(), atol=1e-9)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in w1:
        np.testing.assert_allclose(w2[key].numpy(), w1[key].numpy(), rtol=1e-3, atol=1e-5, err_msg=key)
