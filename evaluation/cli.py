"""`python -m evaluation MODEL --suite zoo ...`: score a checkpoint directory or Hub id and print per-task
scores with the suite's aggregate, as a table or JSON. User mistakes exit 2 with one line, no traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from evaluation.cache import DirectoryScoreCache
from evaluation.errors import EvaluationError
from evaluation.harness import evaluate
from evaluation.models import load_model
from evaluation.rows import ScoreRow, aggregate
from evaluation.suites import get_suite


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n")[0])
    p.add_argument("model", help="checkpoint directory or Hub id")
    p.add_argument(
        "--suite", default="zoo", help="zoo | paper16 | quick | task1,task2,... | folder of task YAMLs"
    )
    p.add_argument(
        "--zoo-root", type=Path, default=None, help="built zoo folder (default $MERGELAB_HOME/zoo)"
    )
    p.add_argument("--limit", type=int, default=None, help="items per task (default: the suite's, else all)")
    p.add_argument(
        "--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ..."
    )
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--batch-size", default="auto", help="auto or an integer")
    p.add_argument("--json", action="store_true", help="print rows and aggregate as JSON")
    p.add_argument("--no-cache", action="store_true", help="score again even if a cached result exists")
    return p


def format_table(rows: list[ScoreRow]) -> str:
    """Per-task scores in percent, then the aggregate (unweighted mean over tasks)."""
    head = ("task", "metric", "value %", "± stderr", "n", "seconds")
    body = [
        (
            r.task,
            r.metric,
            f"{100 * r.value:.2f}",
            "" if r.stderr is None else f"{100 * r.stderr:.2f}",
            str(r.n),
            f"{r.seconds:.2f}",
        )
        for r in rows
    ]
    body.append(("aggregate", "mean", f"{100 * aggregate(rows):.2f}", "", str(sum(r.n for r in rows)), ""))
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = zip(line, widths, strict=True)
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))

    lines = [
        fmt(head),
        fmt(tuple("-" * w for w in widths)),
        *map(fmt, body[:-1]),
        fmt(tuple("-" * w for w in widths)),
        fmt(body[-1]),
    ]
    return "\n".join(lines)


def _quiet() -> None:
    """lm-eval, datasets and transformers log per call; the CLI's output is the table."""
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        batch = args.batch_size if args.batch_size == "auto" else _positive_int(args.batch_size)
        suite = get_suite(args.suite, zoo_root=args.zoo_root)
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        rows = evaluate(
            loaded.model,
            loaded.tokenizer,
            suite,
            fingerprint=loaded.fingerprint,
            model_name=loaded.ref,
            limit=args.limit,
            batch_size=batch,
            cache=None if args.no_cache else DirectoryScoreCache(),
        )
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        out = {
            "model": loaded.ref,
            "fingerprint": loaded.fingerprint,
            "suite": suite.name,
            "suite_version": suite.version,
            "aggregate": aggregate(rows),
            "rows": [r.to_dict() for r in rows],
        }
        print(json.dumps(out, indent=2))
    else:
        print(f"{loaded.ref}  suite {suite.name} (version {suite.version})  fingerprint {loaded.fingerprint}")
        print(format_table(rows))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise EvaluationError(f"--batch-size must be 'auto' or a positive integer, not {text!r}") from None
    if value < 1:
        raise EvaluationError(f"--batch-size must be a positive integer, not {value}")
    return value
