"""`python -m jobs study …` runs a study headless with a progress bar; `python -m jobs list` prints the jobs.

Both use the workspace database ($MERGELAB_HOME/mergelab.duckdb). A study run again with the same arguments
resumes: what is stored is skipped. User mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from jobs.errors import JobError
from store import Store, StoreError


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="database file (default $MERGELAB_HOME/mergelab.duckdb)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("study", parents=[common], help="run the paper's protocol on a pool of checkpoints")
    s.add_argument("--base", required=True, help="base model folder or Hub id")
    s.add_argument("--pool", required=True, help="comma-separated checkpoints")
    s.add_argument("--methods", help="comma-separated configurations (default: the paper's seven)")
    s.add_argument(
        "--sizes", help="comma-separated subset sizes; 'all' is the pool size (default 2,4,6,8,10,all)"
    )
    s.add_argument("--subsets", type=int, default=15, help="subsets per size (default 15)")
    s.add_argument("--suite", required=True, help="zoo, quick, paper16, task names or a task folder")
    s.add_argument("--zoo-root", help="built zoo folder for --suite zoo (default $MERGELAB_HOME/zoo)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=int, help="items per task (default: all)")
    s.add_argument("--name", default="")
    s.add_argument("--backend", choices=("local", "ray"), default="local")
    s.add_argument("--ray-address", help="address of a running Ray cluster (default: start one locally)")
    s.add_argument("--ray-num-cpus", type=int, help="CPUs of the local Ray instance")
    s.add_argument("--workers", type=int, help="CPU worker threads (default 1; one per GPU when present)")
    s.add_argument("--quiet", action="store_true", help="no log lines, only the progress bar")
    ls = sub.add_parser("list", parents=[common], help="print the jobs and their states")
    ls.add_argument("--status", help="only jobs in this state")
    ls.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", parents=[common], help="print one job with its log")
    show.add_argument("job_id")
    return p


def _study(store: Store, args) -> int:
    from tqdm import tqdm

    from jobs.runner import JobRunner

    params = {
        "base": args.base,
        "pool": _csv(args.pool),
        "methods": _csv(args.methods),
        "sizes": _csv(args.sizes),
        "subsets": args.subsets,
        "suite": args.suite,
        "seed": args.seed,
        "limit": args.limit,
        "name": args.name,
        "backend": args.backend,
        "zoo_root": args.zoo_root,
        "ray_address": args.ray_address,
        "ray_num_cpus": args.ray_num_cpus,
    }
    runner = JobRunner(store, workers=args.workers, start=False)
    job_id = runner.submit("study", {k: v for k, v in params.items() if v is not None})  # validates first
    runner.start()
    for jid in runner.recovered:
        print(f"job {jid} was left running by a process that died; marked interrupted", flush=True)
    print(f"job {job_id}: study {runner.get(job_id).params['study_id']}", flush=True)
    bar = tqdm(
        total=1000,
        unit="‰",
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
    )
    printed = 0
    try:
        while True:
            job = runner.get(job_id)
            bar.n = int(job.progress * 1000)
            bar.set_description(job.message[:60])
            bar.refresh()
            if not args.quiet and len(job.log) > printed:
                print(job.log[printed:], end="", flush=True)
                printed = len(job.log)
            if job.finished:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        runner.cancel(job_id)
        runner.wait([job_id], timeout=60)
        job = runner.get(job_id)
    finally:
        bar.close()
        runner.shutdown()
    if job.status == "done":
        r = job.result
        print(
            f"study {r['study_id']} done: {r['ran']} units run, "
            f"{r['skipped']} already stored ({r['total']} in all)"
        )
        return 0
    print(f"study {job.status}: {job.error or ''}".rstrip(), file=sys.stderr)
    return 1


def _list(store: Store, args) -> int:
    df = store.jobs_df(status=args.status, limit=args.limit)
    if df.empty:
        print("no jobs")
        return 0
    df = df[["id", "kind", "status", "progress", "message", "created_at", "finished_at", "attempt", "error"]]
    df["progress"] = (df["progress"] * 100).round().astype(int).astype(str) + "%"
    with_pd_options = __import__("pandas").option_context("display.width", 200, "display.max_colwidth", 50)
    with with_pd_options:
        print(df.to_string(index=False))
    return 0


def _show(store: Store, args) -> int:
    job = store.get_job(args.job_id)
    print(f"{job.id} {job.kind} {job.status} {job.progress:.0%} {job.message}")
    if job.error:
        print(f"error: {job.error}")
    print(job.log, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Store(args.db) as store:
            return {"study": _study, "list": _list, "show": _show}[args.command](store, args)
    except (JobError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from evaluation.errors import EvaluationError
        from merging.errors import MergeError

        if isinstance(exc, MergeError | EvaluationError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
