"""The one user-facing error type, defined in the bottom layer so every layer can raise it."""

import errno
import os
import re


class ScyllaError(Exception):
    """Bad input or a missing resource. The CLI prints the message on one line and exits 1."""


def first_line(err: BaseException) -> str:
    """A library's error cut to its first line, for a one-line message; a colon that introduced
    the lines cut goes too (transformers' tokenizer error ends its first line "from one of:")."""
    text = str(err).strip()
    return text.splitlines()[0].strip().rstrip(":").rstrip() if text else type(err).__name__


# errno -> what the user can do about it: failures of the machine rather than of the input
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free space or write somewhere else",
    errno.EROFS: "the filesystem is read-only: write somewhere else",
    errno.EACCES: "write somewhere you may write",
    errno.EPERM: "write somewhere you may write",
    errno.EISDIR: "it is a folder: give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def errno_of(err: BaseException) -> int | None:
    """The errno behind `err`: an OSError's own, or "os error N" / "errno N" in a library's text
    (safetensors raises its own type for a full disk)."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno
    found = re.search(r"(?:errno|os error) (\d+)", str(err), re.IGNORECASE)
    return int(found.group(1)) if found else None


def os_error(err: Exception, doing: str, path=None) -> ScyllaError:
    """A failed read or write as one user-facing line: what failed, where, and what to do. `err`
    is an OSError, or a library's own error that carries "os error N" in its text (safetensors)."""
    code = errno_of(err)
    where = path if path is not None else getattr(err, "filename", None)
    # The system's words for the errno: pyarrow's own text wraps them in its internals.
    reason = os.strerror(code) if code is not None else (str(err).splitlines() or [type(err).__name__])[0]
    text = f"cannot {doing}" + (f" {where}" if where is not None else "") + f": {reason}"
    fix = _FIXES.get(code)
    return ScyllaError(f"{text}; {fix}" if fix else text)
