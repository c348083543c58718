"""Where evaluation state lives: everything under MERGELAB_HOME (default ./workspace), per design.md."""

from __future__ import annotations

import os
from pathlib import Path


def mergelab_home() -> Path:
    """The workspace root; read each call so tests and the app can point it elsewhere."""
    return Path(os.environ.get("MERGELAB_HOME", "workspace")).expanduser()


def cache_dir(*parts: str) -> Path:
    """A folder under `$MERGELAB_HOME/cache/`, created on demand."""
    path = mergelab_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def confine_datasets_cache() -> None:
    """Point the `datasets` library's cache (lm-eval loads every task through it) into the workspace
    unless the user chose one, so scoring local tasks writes nothing outside MERGELAB_HOME. Must run
    before `datasets` is first imported: it reads the variable at import time."""
    os.environ.setdefault("HF_DATASETS_CACHE", str(mergelab_home().resolve() / "cache" / "hf-datasets"))
