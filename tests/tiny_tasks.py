"""Tiny local lm-eval tasks in the zoo's task-folder format (zoo/ writes the real ones): data files named
relative to each YAML, `{"query", "choices", "gold"}` rows. Short enough for the tiny test models' 64
positions. Used by the evaluation and jobs tests and by the stand-in benchmarks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def tiny_rows(name: str, operands: tuple[int, int] = (3, 3), letters: str = "abcdefg") -> list[dict]:
    """`add`: a+b for a < operands[0], b < operands[1] (gold always index 1); anything else: the letter
    after each of `letters` (gold index cycling)."""
    if name == "add":
        return [
            {"query": f"{a}+{b}=", "choices": [str(a + b + d) for d in (1, 0, 2, 3)], "gold": 1}
            for a in range(operands[0])
            for b in range(operands[1])
        ]
    return [
        {"query": f"next {c}:", "choices": [chr(ord(c) + k) for k in range(1, 5)], "gold": i % 4}
        for i, c in enumerate(letters)
    ]


def write_task_folder(root: Path, tasks: Mapping[str, Iterable[dict]]) -> Path:
    """`<root>/tasks/zoo_<name>.yaml` + `.jsonl` per task; returns root (a `zoo_root` for suite 'zoo')."""
    folder = root / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tasks.items():
        (folder / f"zoo_{name}.yaml").write_text(TASK_YAML.format(name=name))
        (folder / f"zoo_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
