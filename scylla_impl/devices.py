"""Device names, in one place: `auto`, `cpu`, `cuda`, `cuda:N`. A name is checked without torch
(the CLI and the sweep spec validate before anything loads); `resolve` turns it into a device
this machine has, or one clear error naming the fix (a typo, a GPU this machine lacks)."""

from __future__ import annotations

import re

from workloads.errors import ScyllaError

AUTO = "auto"  # cuda (the current GPU) when torch sees one, else cpu
HELP = "auto (cuda when present, else cpu), cpu, cuda or cuda:N"
_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_name(device: str) -> str:
    if not isinstance(device, str) or not _NAME.match(device):
        raise ScyllaError(f"--device {device}: not a device name; use {HELP}")
    return device


def resolve(device: str) -> str:
    """`auto` -> `cuda` or `cpu`; `cuda`/`cuda:N` only where torch sees that GPU."""
    check_name(device)
    import torch

    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ScyllaError(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}, "
                              f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ScyllaError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
