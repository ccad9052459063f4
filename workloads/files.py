"""Writing files the user will keep: a folder is checked before the work that fills it, and a
file appears whole or not at all. Shared by every layer that writes (results, reports,
profiles, training runs), so a full or read-only disk reads the same everywhere."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from workloads.errors import ScyllaError, errno_of, os_error

TMP_SUFFIX = ".tmp"


def check_writable_folder(folder: str | Path, option: str) -> None:
    """`folder` is a folder, or can be made one, that this process may write; else ScyllaError.
    Checked by writing: an unnamed temporary file proves the disk takes writes (a read-only
    mount refuses even root, which `chmod` cannot show) and leaves nothing behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ScyllaError(f"{option} {folder} exists and is not a folder; choose another {option}")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise ScyllaError(f"{option} {folder}: {existing} is a file, not a folder; choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ScyllaError(f"{option} {folder}: {existing} is not writable ({os.strerror(err.errno or 0)}); "
                          f"choose another {option}") from None


def temporary_name(path: Path) -> Path:
    """The name an atomic write of `path` goes through: .<name>.<pid>.tmp beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, then fsync and rename onto `path`. A failure (a full disk) leaves
    neither a temporary nor a torn file, and raises one ScyllaError naming `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, Exception) and errno_of(err) is not None:
            raise os_error(err, "write", path) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
