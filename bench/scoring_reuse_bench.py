"""Scoring many models on one suite: MergeLab's prepared path against plain lm-eval, same models, one run.

    .venv/bin/python bench/scoring_reuse_bench.py [--zoo-root DIR] [--models N] [--limit N]

Plain lm-eval is what MergeLab did before: one `simple_evaluate` per task, HFLM around the in-memory model,
batch 32 on CPU. The prepared path builds and tokenizes the suite's requests once and runs each model over
the whole suite in one lm-eval call with a batch sized for the model. Both score the same models in
alternation; the script checks the scores are equal and prints seconds per model and the ratio.
Without --zoo-root, a stand-in family and two generated 200-item tasks are used (bench/eval_bench.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import evaluate, get_suite, load_model  # noqa: E402
from evaluation.harness import _extract, _speed_up_lm_eval  # noqa: E402


def plain(loaded, suite, limit):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    _speed_up_lm_eval()
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=32)
    out = []
    for task in suite.tasks:
        result = simple_evaluate(
            model=lm,
            tasks=[task.task],
            num_fewshot=task.num_fewshot,
            limit=limit,
            task_manager=suite.task_manager(),
            log_samples=False,
            bootstrap_iters=1000,
        )
        out.append(_extract(result, task.task, task.metric)[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo-root", type=Path)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.zoo_root:
        root = args.zoo_root
        refs = sorted(p.parent for p in root.rglob("config.json"))[: args.models]
    else:
        from bench.eval_bench import standin_zoo

        root = standin_zoo(Path(tmp.name))
        refs = sorted(p.parent for p in (Path(tmp.name) / "models").rglob("config.json"))[: args.models]
    suite = get_suite("zoo", zoo_root=root)
    print(f"suite {suite.name} ({len(suite.tasks)} tasks), {len(refs)} models, limit {args.limit}")
    t_plain, t_ours = [], []
    for ref in refs:
        loaded = load_model(ref)
        t0 = time.perf_counter()
        a = plain(loaded, suite, args.limit)
        t1 = time.perf_counter()
        rows = evaluate(
            loaded.model, loaded.tokenizer, suite, fingerprint="b", model_name="b", limit=args.limit
        )
        t2 = time.perf_counter()
        assert a == [r.value for r in rows], (ref, a, [r.value for r in rows])
        t_plain.append(t1 - t0)
        t_ours.append(t2 - t1)
        print(f"{ref.name:>24}  plain {t1 - t0:6.2f} s   prepared {t2 - t1:6.2f} s   scores equal")
    # the first prepared call builds the requests; later ones reuse them
    later = t_ours[1:] or t_ours
    plain_s, ours_s = statistics.median(t_plain), statistics.median(later)
    print(
        f"median plain {plain_s:.2f} s/model, prepared {ours_s:.2f} s/model "
        f"(first, building requests: {t_ours[0]:.2f} s); ratio {ours_s / plain_s:.2f}"
    )


if __name__ == "__main__":
    main()
