"""Read one data file out of a downloaded wheel or sdist, without installing the package.

Installing these packages would pull heavy unrelated dependencies (and pyserini wants Java);
the data is all we need, so it is read straight from the archive. A member inside a nested
archive (a jar inside a wheel) is written as "outer/path.jar!inner/path"; such members are
slow to reach (the jar is decompressed whole), so they are cached once extracted.
"""

import io
import tarfile
import zipfile
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes

NESTED = "!"


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of `member` inside `archive` (.whl/.zip/.jar or .tar.gz)."""
    outer, _, inner = member.partition(NESTED)
    if not inner:
        return _read_one(archive, outer)
    cached = scylla_home() / "extracted" / archive.name / inner.replace("/", "__")
    if cached.exists():
        return cached.read_bytes()
    data = _read_one(io.BytesIO(_read_one(archive, outer)), inner, label=f"{archive.name}!{outer}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(data, cached)  # a killed run never leaves half a file
    return data


def _read_one(source: Path | io.BytesIO, member: str, label: str | None = None) -> bytes:
    label = label or (source.name if isinstance(source, Path) else "archive")
    if isinstance(source, Path) and source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source, "r:gz") as tf:
            try:
                f = tf.extractfile(member)
            except KeyError:
                f = None
            if f is None:
                raise ScyllaError(f"{label} has no file {member}")
            return f.read()
    try:
        with zipfile.ZipFile(source) as zf:
            return zf.read(member)
    except KeyError:
        raise ScyllaError(f"{label} has no file {member}") from None
    except zipfile.BadZipFile:
        raise ScyllaError(f"{label} is not a readable zip archive; delete it and fetch it again") from None
