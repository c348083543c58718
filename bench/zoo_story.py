"""What a zoo family's checkpoints do to the paper's protocol, in a minute: singles against the base per
task, then success rate / mean gain per configuration and n on the study's own subsets.

    python bench/zoo_story.py ROOT [--family llama] [--sizes 2,4,8,12] [--subsets 5] [--configs a,b]

Merges run through the real engine (`merging.run_merge` into the base's resident model); scoring uses the
fast torch multiple-choice scorer of tests/zoo/scoring.py (lm-eval's `acc` rule, same numbers, no harness
start-up), so recipe tuning takes a minute instead of a study's time. Figures belong here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _items(manifest) -> dict[str, list]:
    items = {}
    for t in manifest.tasks:
        rows = [json.loads(x) for x in (manifest.tasks_dir / f"zoo_{t}.jsonl").read_text().splitlines()]
        items[t] = [
            (r["query"], r["choices"][r["gold"]], [c for i, c in enumerate(r["choices"]) if i != r["gold"]])
            for r in rows
        ]
    return items


def _head(items: dict[str, list], limit: int | None) -> dict[str, list]:
    return items if limit is None else {t: v[:limit] for t, v in items.items()}


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    import merging
    from jobs.study import build_recipe, resolve_configs, sample_subsets
    from tests.zoo.scoring import mc_accuracy
    from zoo import load_manifest

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--family", default="llama")
    p.add_argument("--sizes", default="2,4,8,12")
    p.add_argument("--subsets", type=int, default=5)
    p.add_argument("--configs", default="TA (mean),TA (sum),TIES,Model Stock")
    p.add_argument("--limit", type=int, help="score only the first N items of each task (faster, noisier)")
    p.add_argument("--singles-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    manifest = load_manifest(Path(args.root))
    items = _head(_items(manifest), args.limit)
    tasks = list(manifest.tasks)
    base_ref = str(manifest.base_dir(args.family))
    pool = [str(d) for d in manifest.checkpoint_dirs(args.family)]

    def score(model) -> dict[str, float]:
        return {t: mc_accuracy(model, items[t]) * 100 for t in tasks}

    started = time.perf_counter()
    base_model = AutoModelForCausalLM.from_pretrained(base_ref, dtype=torch.float32)
    base = score(base_model)
    base_mean = sum(base.values()) / len(base)
    print("model".ljust(34), *(t[:6].rjust(6) for t in tasks), "  mean   gain")
    print("base".ljust(34), *(f"{base[t]:6.1f}" for t in tasks), f"{base_mean:6.1f}")
    gains = []
    for ref in pool:
        s = score(AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32))
        mean = sum(s.values()) / len(s)
        gains.append(mean - base_mean)
        cells = (f"{s[t] - base[t]:+6.1f}" for t in tasks)
        print(Path(ref).name.ljust(34), *cells, f"{mean:6.1f} {mean - base_mean:+6.2f}")
    beat = sum(g > 0 for g in gains)
    print(f"singles: mean gain {sum(gains) / len(gains):+.2f} pp, {beat}/{len(gains)} beat the base")

    if args.singles_only:
        return 0
    sizes = [int(n) for n in args.sizes.split(",")]
    subsets = sample_subsets(pool, sizes, args.subsets, 0)
    sink = merging.ModelSink(base_model)
    opened = {r: merging.open_checkpoint(r) for r in [base_ref, *pool]}
    for config in resolve_configs([c.strip() for c in args.configs.split(",")]):
        cells = []
        for n in sizes:
            results = []
            for _, _, members in (s for s in subsets if s[0] == n):
                recipe = build_recipe(config, base_ref, members, 0)
                merging.run_merge(recipe, sink, device="cpu", checkpoints=opened)
                s = score(base_model)
                results.append(sum(s.values()) / len(s) - base_mean)
            ok = 100 * sum(g > 0 for g in results) / len(results)
            cells.append(f"n={n}: {ok:3.0f}%/{sum(results) / len(results):+5.2f}")
        print(f"{config.name:12s}", "  ".join(cells), flush=True)
    for ck in opened.values():
        ck.close()
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
