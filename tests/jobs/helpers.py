"""A tiny local lm-eval task folder in the zoo format, short enough for the tiny test models."""

from __future__ import annotations

import json
from pathlib import Path

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
metadata:
  version: 1.0
"""


def _rows(name: str) -> list[dict]:
    if name == "add":
        return [
            {"query": f"{a}+{b}=", "choices": [str(a + b + d) for d in (1, 0, 2, 3)], "gold": 1}
            for a in range(3)
            for b in range(2)
        ]
    return [
        {"query": f"next {c}:", "choices": [chr(ord(c) + k) for k in range(1, 5)], "gold": i % 4}
        for i, c in enumerate("abcde")
    ]


def write_zoo_tasks(root: Path, names=("add", "letters")) -> Path:
    """`<root>/tasks/zoo_<name>.yaml` + `.jsonl`; returns root (pass it as zoo_root with suite 'zoo')."""
    folder = root / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"zoo_{name}.yaml").write_text(TASK_YAML.format(name=name))
        (folder / f"zoo_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(name)))
    return root
