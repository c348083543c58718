"""Evaluation throughput on the `zoo` suite (items per second, CPU by default), then the same scoring again,
served from the score cache.

    .venv/bin/python bench/eval_bench.py [--zoo-root DIR] [--device cpu] [--batch-size auto] [--limit N]
    .venv/bin/python bench/eval_bench.py --standin   # no zoo yet: a tiny random family + generated tasks

Pass 1 loads the base and every checkpoint found under the zoo (directories with a config.json), scores each
on the zoo suite with an empty cache and reports items/s (model loading excluded, shown apart). Pass 2 does
the same with the now-filled cache: every model must come back from it (checked, printed).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import DirectoryScoreCache, evaluate, get_suite, load_model  # noqa: E402
from mergelab_home import zoo_dir  # noqa: E402


def standin_zoo(root: Path, items: int = 200) -> Path:
    """A base + 12 noisy 'fine-tunes' (tests/tiny_models) and two generated tasks in the zoo's task format."""
    from tests.tiny_models import make_family
    from tests.tiny_tasks import write_task_folder

    make_family(root / "models", arch="llama", n=12)
    rng = random.Random(0)
    standin: dict[str, list[dict]] = {}
    for name in ("add", "sub"):
        rows = []
        for _ in range(items):
            a, b = rng.randrange(50), rng.randrange(50)
            ans = a + b if name == "add" else a - b
            choices = [str(ans + d) for d in rng.sample([-2, -1, 0, 1, 2, 10], 4) if d] + [str(ans)]
            choices = choices[:3] + [str(ans)]
            rng.shuffle(choices)
            op = "+" if name == "add" else "-"
            rows.append({"query": f"{a}{op}{b}=", "choices": choices, "gold": choices.index(str(ans))})
        standin[name] = rows
    return write_task_folder(root, standin)


def find_models(root: Path) -> list[Path]:
    """Checkpoint directories under the zoo, base first (a name containing 'base'), then sorted."""
    dirs = sorted({p.parent for p in root.rglob("config.json") if "tasks" not in p.parts})
    return sorted(dirs, key=lambda p: ("base" not in p.name, str(p)))


def score_all(models, suite, args, cache) -> tuple[float, float, int, int]:
    """(load seconds, scoring seconds, items scored, models served from cache)."""
    load_s = score_s = 0.0
    items = served = 0
    for path in models:
        t0 = time.perf_counter()
        loaded = load_model(path, device=args.device)
        t1 = time.perf_counter()
        hit = cache.get(loaded.fingerprint, suite.version, args.limit)
        rows = evaluate(
            loaded.model,
            loaded.tokenizer,
            suite,
            fingerprint=loaded.fingerprint,
            model_name=path.name,
            limit=args.limit,
            batch_size=args.batch_size,
            cache=cache,
        )
        t2 = time.perf_counter()
        load_s += t1 - t0
        score_s += t2 - t1
        items += sum(r.n for r in rows)
        served += hit is not None
    return load_s, score_s, items, served


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo-root", type=Path, default=None)
    p.add_argument("--standin", action="store_true", help="build a tiny stand-in zoo in a temp dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args()
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    import logging

    for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.zoo_root or zoo_dir()
        if args.standin:
            root = standin_zoo(Path(tmp) / "zoo")
        if not (root / "tasks").is_dir():
            print(
                f"no zoo at {root}: build it (`python -m zoo build`) or run with --standin", file=sys.stderr
            )
            return 2
        suite = get_suite("zoo", zoo_root=root)
        models = find_models(root)
        cache = DirectoryScoreCache(Path(tmp) / "evals")
        print(
            f"zoo {root}: {len(models)} models, suite version {suite.version}, "
            f"tasks {', '.join(suite.task_names)}"
        )
        print(f"device {args.device}, batch size {args.batch_size}, limit {args.limit}")
        load_s, score_s, items, served = score_all(models, suite, args, cache)
        print(
            f"pass 1 (cold): scored {items} items in {score_s:.2f} s = {items / score_s:.1f} items/s "
            f"(+ {load_s:.2f} s loading {len(models)} models); served from cache: {served}/{len(models)}"
        )
        load_s, score_s, items, served = score_all(models, suite, args, cache)
        print(
            f"pass 2 (cached): {items} items in {score_s:.3f} s; served from cache: {served}/{len(models)} "
            f"(+ {load_s:.2f} s loading and fingerprinting)"
        )
        return 0 if served == len(models) else 1


if __name__ == "__main__":
    sys.exit(main())
