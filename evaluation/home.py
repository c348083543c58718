"""Where evaluation state lives: the workspace as mergelab_home.py defines it (design.md "Workspace")."""

from __future__ import annotations

import os

from mergelab_home import cache_dir, zoo_dir
from mergelab_home import home_dir as mergelab_home

__all__ = ["cache_dir", "confine_datasets_cache", "mergelab_home", "zoo_dir"]


def confine_datasets_cache() -> None:
    """Point the `datasets` library's cache (lm-eval loads every task through it) into the workspace
    unless the user chose one, so scoring local tasks writes nothing outside MERGELAB_HOME. Must run
    before `datasets` is first imported: it reads the variable at import time."""
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_dir("hf-datasets", create=False)))
