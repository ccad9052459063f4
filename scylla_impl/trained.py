"""Where trained drafts for a target live: SCYLLA_HOME/drafts/<target fingerprint>/<name>."""

from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError


def drafts_dir(target) -> Path:
    return scylla_home() / "drafts" / target.info.fingerprint


def default_draft_spec(target, name: str = "scylla") -> str:
    """The trained draft `name` for `target`, or a clear error saying how to get one."""
    folder = drafts_dir(target) / name
    if (folder / "model.safetensors").is_file():
        return str(folder)
    raise ScyllaError(
        f"no trained '{name}' draft for target '{target.info.name}' in {folder.parent}; "
        f"train one with `scylla train --method {name.split('-')[0]}` or pass --draft (e.g. --draft random:scylla)"
    )
