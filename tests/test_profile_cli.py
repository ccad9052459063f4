"""`scylla profile` with a --target that is not a model, or an --out it cannot write: one error
line and exit 1 before any measuring (the quick plan measures for a minute first)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.errors import ScyllaError


def run_profile(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SCYLLA_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", "profile", "--device", "cpu", "--threads", "1",
                           "--quick", *args], capture_output=True, text=True, timeout=300, env=env)


def _error_line(done: subprocess.CompletedProcess, status: int = 1) -> str:
    assert done.returncode == status, done.stderr
    assert done.stdout == ""  # nothing measured, nothing reported
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _not_a_model(kind: str, tmp_path: Path, model_dir: Path | None = None) -> Path:
    where = tmp_path / kind.replace(" ", "_")
    if kind == "a file":
        where.write_text("not a model\n")
        return where
    where.mkdir()
    if kind == "random files":
        (where / "blob.bin").write_bytes(os.urandom(4096))
        (where / "notes.txt").write_text("results from last week\n")
    elif kind == "truncated weights":  # an interrupted copy of a real model folder
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(model_dir / name, where / name)
        with open(model_dir / "model.safetensors", "rb") as src:
            (where / "model.safetensors").write_bytes(src.read(1 << 20))
    return where


@pytest.mark.parametrize("kind", ["empty folder", "random files", "a file", "truncated weights"])
def test_profile_target_that_is_not_a_model(kind, tmp_path, default_model_dir):
    target = _not_a_model(kind, tmp_path, default_model_dir)
    out = tmp_path / "prof"

    error = _error_line(run_profile("--target", str(target), "--out", str(out)))

    expected = {  # the loader's own words (scylla_impl/target.py) where it checks the same thing
        "empty folder": f"cannot load target '{target}': the folder has no config.json; give a model folder",
        "random files": f"cannot load target '{target}': the folder has no config.json",
        "a file": f"cannot load target '{target}': it is a file",
        "truncated weights": f"--target {target}: model.safetensors is 1048576 bytes, its header says",
    }[kind]
    assert error.startswith(f"error: {expected}")
    assert not out.exists()


def test_profile_out_it_cannot_write(tmp_path, read_only_disk):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")

    error = _error_line(run_profile("--out", str(read_only_disk / "existing")))
    assert error == (f"error: --out {read_only_disk / 'existing'}: {read_only_disk / 'existing'} is not writable "
                     "(Read-only file system); choose another --out")
    error = _error_line(run_profile("--out", str(read_only_disk / "new" / "prof")))
    assert error == (f"error: --out {read_only_disk / 'new' / 'prof'}: {read_only_disk} is not writable "
                     "(Read-only file system); choose another --out")
    error = _error_line(run_profile("--out", str(a_file / "prof")))
    assert error == f"error: --out {a_file / 'prof'}: {a_file} is a file, not a folder; choose another --out"
    error = _error_line(run_profile("--out", str(a_file)), status=2)  # click's own check of the option
    assert f"'{a_file}' is a file" in error
    assert a_file.read_text() == "keep me\n"


def _other_bad_target(kind: str, tmp_path: Path, model_dir: Path) -> Path:
    where = tmp_path / kind.replace(" ", "_")
    where.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    if kind == "broken config":
        (where / "config.json").write_text("{not json")
    elif kind == "a seq2seq model":
        (where / "config.json").write_text(json.dumps({"model_type": "t5"}))
    else:
        (where / "config.json").write_text(json.dumps(config))
    if kind == "no tokenizer":
        import torch
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(4)}, str(where / "model.safetensors"))
    return where


@pytest.mark.parametrize("kind, expected", [
    ("broken config", "--target {}: its config does not load"),
    ("a seq2seq model", "--target {}: a 't5' model is not a decoder-only causal LM"),
    ("no weights", "--target {}: no weights in it (model.safetensors or pytorch_model.bin)"),
    ("no tokenizer", "cannot load target '{}': no tokenizer it can load"),
])
def test_profile_checks_the_target_before_measuring(kind, expected, tmp_path, monkeypatch, default_model_dir):
    from roofline import profile as prof

    def measured(*args, **kwargs):
        raise AssertionError("measured before checking the target")

    monkeypatch.setattr(prof, "_bandwidth", measured)
    target = _other_bad_target(kind, tmp_path, default_model_dir)
    with pytest.raises(ScyllaError) as caught:
        prof.run_profile(prof.ProfileOptions(out=tmp_path / "prof", device="cpu", target=str(target)))
    assert str(caught.value).startswith(expected.format(target))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "prof").exists()
