"""`python -m zoo build|report`: build the demo zoo, or score its models on the `zoo` suite."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from zoo.build import build_zoo
from zoo.manifest import ZooError, default_root, load_manifest
from zoo.train import FAMILIES, BuildCancelled


def _families(arg: str) -> tuple[str, ...]:
    return FAMILIES if arg == "all" else (arg,)


def cmd_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    root = Path(args.out) if args.out else default_root()
    bar = tqdm(total=1, unit="step", desc="zoo", dynamic_ncols=True)

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.set_description(message)
        bar.n = done
        bar.refresh()

    start = time.perf_counter()
    manifest = build_zoo(
        root,
        seed=args.seed,
        families=_families(args.family),
        scale="tiny" if args.tiny else "full",
        on_progress=progress,
    )
    bar.close()
    print(
        f"zoo at {root}: {len(manifest.models)} models, {len(manifest.tasks)} tasks "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


def format_table(rows: dict[str, dict[str, float]], tasks: list[str]) -> str:
    """A markdown table: one row per model, one column per task (accuracy in %), and the suite mean."""
    head = "| model | " + " | ".join(t.removeprefix("zoo_") for t in tasks) + " | mean |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for name, accs in rows.items():
        vals = [accs[t] * 100 for t in tasks]  # fractions in, percent out
        cells = " | ".join(f"{v:.1f}" for v in vals)
        lines.append(f"| {name} | {cells} | {sum(vals) / len(vals):.1f} |")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    # Lazy: `evaluation` is a higher layer than `zoo`; only this CLI entry point uses it.
    import evaluation

    for name in ("lm_eval", "datasets", "transformers"):  # the table is the output; keep per-call logs down
        logging.getLogger(name).setLevel(logging.ERROR)
    root = Path(args.root) if args.root else default_root()
    manifest = load_manifest(root)
    if manifest is None:
        raise ZooError(f"no zoo at {root}; build it with `python -m zoo build`")
    try:
        suite = evaluation.get_suite("zoo", zoo_root=root)
        tasks = [t.task for t in suite.tasks]
        rows: dict[str, dict[str, float]] = {}
        for family in _families(args.family):
            if family not in manifest.families:
                continue
            for name in manifest.names(family):
                loaded = evaluation.load_model(manifest.model_dir(name), device="cpu", dtype="float32")
                scores = evaluation.evaluate(
                    loaded.model,
                    loaded.tokenizer,
                    suite,
                    fingerprint=loaded.fingerprint,
                    model_name=name,
                    limit=args.limit,
                )
                rows[name] = {r.task: r.value for r in scores}
                print(f"scored {name}: mean {evaluation.aggregate(scores) * 100:.1f}", file=sys.stderr)
    except evaluation.EvaluationError as e:
        raise ZooError(str(e)) from e
    print(format_table(rows, tasks))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the demo zoo (idempotent, safe to interrupt)")
    b.add_argument("--out", help="zoo folder (default $MERGELAB_HOME/zoo)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    b.add_argument("--tiny", action="store_true", help="a much smaller, faster zoo (for tests)")
    r = sub.add_parser("report", help="score every base and checkpoint on the zoo suite with lm-eval")
    r.add_argument("--root", help="zoo folder (default $MERGELAB_HOME/zoo)")
    r.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    r.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    args = parser.parse_args(argv)
    try:
        return cmd_build(args) if args.command == "build" else cmd_report(args)
    except (ZooError, BuildCancelled) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
