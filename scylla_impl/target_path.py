"""Where a target name loads from: the embedded default, a model folder or a hub id, checked
without torch or transformers, so a mistyped --target is one line before the engine loads."""

from pathlib import Path

from scylla_impl import hub
from scylla_impl.embedded import ensure_default_model
from workloads.errors import ScyllaError


def model_path(name: str) -> str:
    """The folder (or hub id) `name` loads from, checked as far as it can be without loading.
    `scylla generate`, `train`, `profile` and `sweep` make these checks before they load torch;
    the profile's pre-flight (roofline/profile.check_target) then checks what only loading shows."""
    path = str(ensure_default_model()) if name == "default" else name
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ScyllaError(f"cannot load target '{name}': it is a file; give a model folder (config.json and weights), "
                              "'default' or a hub id")
        if not (local / "config.json").is_file():
            raise ScyllaError(f"cannot load target '{name}': the folder has no config.json; give a model folder "
                              "(config.json, weights and tokenizer files), 'default' or a hub id")
        return str(local)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a hub id is org/name
        raise ScyllaError(f"cannot load target '{name}': no such folder (give a model folder, 'default' or a hub id org/name)")
    return hub.loadable(name)
