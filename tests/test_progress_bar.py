"""On a terminal, a long step shows a bar (workloads/progress.py), whatever size the terminal says it is."""

import contextlib
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("size", [(0, 0), (30, 100)], ids=["unsized pty", "sized pty"])
def test_a_bar_shows_on_any_terminal(size):
    """A fresh pty reports 0 rows and 0 columns, where tqdm would draw nothing at all."""
    code = ("import time\nfrom workloads.progress import ProgressBar\n"
            "with ProgressBar('t', 'work', 3, unit='items') as b:\n"
            "    for _ in range(3): time.sleep(0.05); b.update(1)\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL, cwd=REPO)
    os.close(slave)
    shown = b""
    with contextlib.suppress(OSError):  # the pty's reads end in EIO once the process has gone
        while chunk := os.read(master, 4096):
            shown += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    assert "work: 100%|" in shown.decode() and "3/3" in shown.decode(), shown[-500:]
