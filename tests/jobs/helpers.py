"""A tiny local lm-eval task folder in the zoo format, short enough for the tiny test models."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_tasks import tiny_rows, write_task_folder


def write_zoo_tasks(root: Path, names=("add", "letters")) -> Path:
    """`<root>/tasks/zoo_<name>.yaml` + `.jsonl`; returns root (pass it as zoo_root with suite 'zoo')."""
    return write_task_folder(root, {n: tiny_rows(n, operands=(3, 2), letters="abcde") for n in names})
