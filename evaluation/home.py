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
