"""Fixtures for evaluation tests: a tiny task folder in the zoo's exact format and a private MERGELAB_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TASK_YAML = """task: zoo_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: zoo_{name}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def task_rows(name: str) -> list[dict]:
    """Short items (the tiny models have 64 positions), 4 choices, gold index varying."""
    if name == "add":
        return [
            {"query": f"{a}+{b}=", "choices": [str(a + b + d) for d in (1, 0, 2, 3)], "gold": 1}
            for a in range(3)
            for b in range(3)
        ]
    return [
        {"query": f"next {c}:", "choices": [chr(ord(c) + k) for k in range(1, 5)], "gold": i % 4}
        for i, c in enumerate("abcdefg")
    ]


def write_task_folder(root: Path, names=("add", "letters")) -> Path:
    """`<root>/tasks/zoo_<name>.yaml` + `.jsonl`, the contract of zoo/ (data files relative to the YAML)."""
    folder = root / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"zoo_{name}.yaml").write_text(TASK_YAML.format(name=name))
        rows = task_rows(name)
        (folder / f"zoo_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(autouse=True)
def eval_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    return home


@pytest.fixture
def zoo_root(tmp_path) -> Path:
    return write_task_folder(tmp_path / "zoo")
