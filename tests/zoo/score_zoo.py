"""Developer check of a built zoo's task design: `python -m tests.zoo.score_zoo ROOT [FAMILY]` prints every
model's accuracy per task with the fast torch scorer (the README table comes from `python -m zoo report`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tests.zoo.scoring import mc_accuracy
from zoo import load_manifest


def main(root: str, family: str = "llama") -> None:
    torch.set_num_threads(1)
    manifest = load_manifest(Path(root))
    items = {}
    for t in manifest.tasks:
        rows = [json.loads(x) for x in (manifest.tasks_dir / f"zoo_{t}.jsonl").read_text().splitlines()]
        items[t] = [
            (r["query"], r["choices"][r["gold"]], [c for i, c in enumerate(r["choices"]) if i != r["gold"]])
            for r in rows
        ]
    print("model".ljust(32), *(t[:6].rjust(6) for t in manifest.tasks), "  mean")
    for name in manifest.names(family):
        model = AutoModelForCausalLM.from_pretrained(manifest.model_dir(name))
        accs = [mc_accuracy(model, items[t]) * 100 for t in manifest.tasks]
        print(name.ljust(32), *(f"{a:6.1f}" for a in accs), f"{sum(accs) / len(accs):6.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
