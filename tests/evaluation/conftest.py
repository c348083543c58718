"""Fixtures for evaluation tests: a tiny task folder in the zoo's exact format and a private MERGELAB_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_tasks import tiny_rows
from tests.tiny_tasks import write_task_folder as write_tasks


def write_task_folder(root: Path, names=("add", "letters")) -> Path:
    """The zoo's task format with tiny items (see tests/tiny_tasks.py)."""
    return write_tasks(root, {name: tiny_rows(name) for name in names})


@pytest.fixture(autouse=True)
def eval_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    return home


@pytest.fixture
def zoo_root(tmp_path) -> Path:
    return write_task_folder(tmp_path / "zoo")
