"""`scylla train` never destroys what it did not write and never unpickles a checkpoint, tried as
a careless or hostile user would: through the real CLI, on real folders and files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import SEQ, make_tiny

from scylla_impl.training.run_folder import STATE_FILE, checkpoints


def scylla_train(*args, home):
    env = {**os.environ, "SCYLLA_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "harness.cli", "train", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def one_error_line(done) -> str:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory, default_model_dir):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(Path(m.__file__).read_text() for m in (subprocess, os)))
    return path


def run_args(tiny_target, corpus, out, *extra):
    return ["--target", str(tiny_target), "--method", "eagle2", "--pretrain-data", str(corpus), "--no-decontaminate",
            "--pretrain-tokens", str(SEQ * 8), "--sft-tokens", "0", "--epochs", "1", "--seq-len", str(SEQ),
            "--batch-size", "4", "--checkpoint-every", "1", "--threads", "1", "--progress", "none",
            "--out", str(out), *extra]


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"")
                  for p in folder.rglob("*"))


def test_force_on_a_user_folder_deletes_nothing(tiny_target, corpus, tmp_path):
    """The audit's case: --force --out <the user's folder> with a bad input, and with good inputs."""
    mine = tmp_path / "my-project"
    (mine / "src").mkdir(parents=True)
    (mine / "notes.txt").write_text("a year of work")
    (mine / "src" / "main.py").write_text("print('hello')")
    before = snapshot(mine)

    for text in (tmp_path / "nope.txt", corpus):
        done = scylla_train(*run_args(tiny_target, text, mine, "--force"), home=tmp_path / "home")
        line = one_error_line(done)
        assert "--force refuses to clear" in line and "notes.txt" in line
        assert snapshot(mine) == before


@pytest.mark.slow  # about 30 s on 2 cores: a real training run first
def test_force_validates_every_input_before_clearing_a_run(tiny_target, corpus, tmp_path):
    run = tmp_path / "run"
    first = scylla_train(*run_args(tiny_target, corpus, run), home=tmp_path / "home")
    assert first.returncode == 0, first.stderr
    before = snapshot(run)
    bad = scylla_train(*run_args(tiny_target, tmp_path / "nope.txt", run, "--force"), home=tmp_path / "home")
    one_error_line(bad)
    assert snapshot(run) == before  # a bad input leaves the finished run as it was

    again = scylla_train(*run_args(tiny_target, corpus, run, "--force", "--seed", "1"), home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    assert snapshot(run) != before and (run / "model.safetensors").is_file()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_unpickles_a_crafted_checkpoint(tiny_target, corpus, tmp_path):
    run = tmp_path / "run"
    done = scylla_train(*run_args(tiny_target, corpus, run, "--pretrain-tokens", str(SEQ * 16)), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    newest = checkpoints(run)[-1]
    state = torch.load(newest / STATE_FILE, weights_only=True)  # what we write reads back safely
    marker = tmp_path / "pwned"
    state["rows"] = _Exploit(marker)
    torch.save(state, newest / STATE_FILE)

    resumed = scylla_train("--resume", "--out", str(run), "--threads", "1", "--progress", "none", home=tmp_path / "home")
    line = one_error_line(resumed)
    assert "cannot resume from" in line and STATE_FILE in line
    assert not marker.exists()


@pytest.mark.parametrize("extra,words,code", [
    (["--lr", "nan"], ["lr must be a positive number"], 1),
    (["--lr", "-1e-3"], ["lr must be a positive number"], 1),
    (["--draft-vocab", "-5"], ["draft-vocab must be >= 0"], 1),
    (["--dtype", "int8"], ["--dtype", "int8"], 2),
    (["--threads", "-1"], ["--threads", "-1"], 2),
    (["--device", "cuda"], ["no CUDA device"], 1),
])
def test_bad_options_are_one_line_before_any_work(extra, words, code, tiny_target, corpus, tmp_path):
    done = scylla_train(*run_args(tiny_target, corpus, tmp_path / "run"), *extra, home=tmp_path / "home")
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_out_that_is_a_file_is_refused(tiny_target, corpus, tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    for extra in ([], ["--force"]):
        done = scylla_train(*run_args(tiny_target, corpus, out), *extra, home=tmp_path / "home")
        assert done.returncode in (1, 2) and done.stderr.strip().startswith("error:"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert out.read_text() == "keep me"


def test_read_only_out_is_one_line_before_any_work(tiny_target, corpus, read_only_disk, tmp_path):
    for out in (read_only_disk / "new", read_only_disk / "existing"):
        line = one_error_line(scylla_train(*run_args(tiny_target, corpus, out), home=tmp_path / "home"))
        assert "not writable" in line and "--out" in line


def test_full_disk_keeps_no_partial_checkpoint_and_resume_finishes(tiny_target, corpus, full_disk, tmp_path):
    out = full_disk / "run"
    done = scylla_train(*run_args(tiny_target, corpus, out), home=tmp_path / "home")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot write") and "No space left on device" in line and "--resume" in line
    left = sorted(p.name for p in out.rglob("*"))
    assert not [n for n in left if "tmp" in n], left  # no temporaries, no half checkpoint

    subprocess.run(["mount", "-o", "remount,size=16m", str(full_disk)], check=True)  # the user frees space
    done = scylla_train("--resume", "--out", str(out), "--progress", "none", "--threads", "1", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_pretrain_data_that_is_not_utf8_is_refused(tiny_target, tmp_path):
    """Binary or latin-1 files would train the draft on noise; before, they were read with
    replacement characters and the run "succeeded"."""
    data = tmp_path / "latin1.txt"
    data.write_bytes("Un caf\u00e9 cr\u00e8me, s'il vous pla\u00eet.\n".encode("latin-1") * 500)
    out = tmp_path / "run"
    line = one_error_line(scylla_train(*run_args(tiny_target, data, out), home=tmp_path / "home"))
    assert f"pretrain data {data}: not UTF-8 text" in line
    assert not out.exists()


def test_train_config_that_is_not_utf8_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_bytes('{"method": "eagle2", "name": "caf\u00e9"}'.encode("latin-1"))
    line = one_error_line(scylla_train("--resume", "--out", str(out), home=tmp_path / "home"))
    assert "cannot read training config" in line and "utf-8" in line
