"""Where scylla-bench keeps what it fetches and converts: models, packaged datasets, drafts."""

import os
from pathlib import Path

import platformdirs


def scylla_home() -> Path:
    """`SCYLLA_HOME`, or the user's cache dir. Created on first use."""
    root = os.environ.get("SCYLLA_HOME") or platformdirs.user_cache_dir("scylla-bench")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
