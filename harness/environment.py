"""The run's environment, recorded on every row: project commit, package versions, device."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from roofline.profile_doc import read_profile_doc

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "scylla-bench", "torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy",
    "pandas", "pyarrow", "triton", "nvidia-ml-py",
)


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """HEAD of the project checkout, with '-dirty' when tracked files differ; None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
        )
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        dirty = subprocess.run(
            # No optional locks: a status that refreshes the index would take .git/index.lock
            # in the user's repository while they work in it.
            ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        )
        return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def profile_id(profile_dir: str | None) -> str | None:
    """A profile's own id if it records one, else a hash of its profile.json."""
    if profile_dir is None:
        return None
    profile = read_profile_doc(profile_dir)
    return profile.profile_id or "sha256:" + hashlib.sha256(profile.file.read_bytes()).hexdigest()[:16]


def snapshot(device: str, profile_dir: str | None) -> dict:
    """Environment columns shared by every row of one invocation."""
    import torch

    return {
        "git_commit": git_commit(),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "profile_id": profile_id(profile_dir),
        "host": platform.node(),
        "pid": os.getpid(),
    }
