"""`python -m jobs study|sweep|report|list|show`: run studies and sweeps headless, report, list jobs.

`study` runs the paper's protocol with a progress bar; `sweep` varies one hyperparameter of one method on
fixed subsets (a study over values) and prints score against the value; `report [STUDY_ID|--latest]
[--json]` prints a study's tables; `list` and `show` print jobs.

Both use the workspace database ($MERGELAB_HOME/mergelab.duckdb). A study run again with the same arguments
resumes: what is stored is skipped. User mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from jobs.errors import JobError
from jobs.study import DEFAULT_CONFIG_NAMES, DEFAULT_SIZES, DEFAULT_SUBSETS
from jobs.sweep import SWEEP_DEFAULT_SUBSETS
from store import Store, StoreError


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _run_options() -> argparse.ArgumentParser:
    """The options `study` and `sweep` share: where the zoo is, seeding, and how the units run."""
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument(
        "--zoo-root",
        help="built zoo folder for --suite zoo and sweep's default pool (default $MERGELAB_HOME/zoo)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--limit", type=int, help="items per task (default: all)")
    run.add_argument("--name", default="")
    run.add_argument("--backend", choices=("local", "ray"), default="local")
    run.add_argument("--ray-address", help="address of a running Ray cluster (default: start one locally)")
    run.add_argument("--ray-num-cpus", type=int, help="CPUs of the local Ray instance")
    run.add_argument(
        "--processes",
        default="auto",
        help="local backend on CPU: processes running units side by side, each with its own copy of the base "
        "(default auto: one per core, as many as the resident budget holds; 1: inside the job)",
    )
    run.add_argument("--workers", type=int, help="CPU worker threads (default 1; one per GPU when present)")
    run.add_argument("--quiet", action="store_true", help="no log lines, only the progress bar")
    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="database file (default $MERGELAB_HOME/mergelab.duckdb)")
    run = _run_options()
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "study", parents=[common, run], help="run the paper's protocol on a pool of checkpoints"
    )
    s.add_argument("--base", required=True, help="base model folder or Hub id")
    s.add_argument("--pool", required=True, help="comma-separated checkpoints")
    s.add_argument(
        "--methods",
        help=f"comma-separated configurations (default: {', '.join(DEFAULT_CONFIG_NAMES)})",
    )
    s.add_argument(
        "--sizes",
        help="comma-separated subset sizes; 'all' is the pool size "
        f"(default {','.join(map(str, DEFAULT_SIZES))} up to the pool size, and the pool size)",
    )
    s.add_argument(
        "--subsets", type=int, default=DEFAULT_SUBSETS, help=f"subsets per size (default {DEFAULT_SUBSETS})"
    )
    s.add_argument("--suite", required=True, help="zoo, quick, paper16, task names or a task folder")
    s.add_argument(
        "--save-merges",
        action="store_true",
        help="also write every merge to $MERGELAB_HOME/merges/study-<id>/ (default: scored in memory only)",
    )
    w = sub.add_parser(
        "sweep",
        parents=[common, run],
        help="vary one method hyperparameter on fixed subsets (the paper's ablations)",
        description="Merge the same seeded subsets with one method at each value of one hyperparameter and "
        "score every merge; the Study page draws score against the value. Without --base/--pool the "
        "demo zoo's first family is used.",
    )
    w.add_argument("--method", required=True, help="a registered method, e.g. task_arithmetic")
    w.add_argument("--param", required=True, help="the hyperparameter: lambda, density, svd_thresh, t…")
    w.add_argument("--values", required=True, help="comma-separated values, e.g. 0.2,0.5,1,1.5,2")
    w.add_argument("--n", required=True, help="checkpoints per merge ('all' is the pool size)")
    w.add_argument(
        "--subsets",
        type=int,
        default=SWEEP_DEFAULT_SUBSETS,
        help="subsets of size n, the same for every value",
    )
    w.add_argument("--base", help="base model (default: the demo zoo's first family)")
    w.add_argument("--pool", help="comma-separated checkpoints (default: that family's checkpoints)")
    w.add_argument("--suite", default="zoo", help="zoo, quick, paper16, task names or a task folder")
    ls = sub.add_parser("list", parents=[common], help="print the jobs and their states")
    ls.add_argument("--status", help="only jobs in this state")
    ls.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", parents=[common], help="print one job with its log")
    show.add_argument("job_id")
    rep = sub.add_parser("report", parents=[common], help="print a study's tables (text or JSON)")
    rep.add_argument("study_id", nargs="?", help="a study id or a unique prefix (default: the latest)")
    rep.add_argument("--latest", action="store_true", help="the most recently created study")
    rep.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _study(store: Store, args) -> int:
    params = {
        "base": args.base,
        "pool": _csv(args.pool),
        "methods": _csv(args.methods),
        "sizes": _csv(args.sizes),
        "subsets": args.subsets,
        **_run_params(args),
        "save_merges": args.save_merges or None,
    }
    return _follow(store, args, "study", params)


def _run_params(args) -> dict:
    """The job parameters `study` and `sweep` take alike from the shared run options (and --suite)."""
    return {
        "suite": args.suite,
        "seed": args.seed,
        "limit": args.limit,
        "name": args.name,
        "backend": args.backend,
        "zoo_root": args.zoo_root,
        "ray_address": args.ray_address,
        "ray_num_cpus": args.ray_num_cpus,
        "processes": args.processes,
    }


def _zoo_family(zoo_root: str | None) -> tuple[str, list[str]]:
    """The base and checkpoints of the demo zoo's first family (what a sweep uses by default)."""
    from pathlib import Path

    import zoo

    try:
        manifest = zoo.load_manifest(Path(zoo_root) if zoo_root else None)
    except zoo.ZooError as exc:
        raise JobError(str(exc)) from None
    if manifest is None:
        where = zoo_root or zoo.default_root()
        raise JobError(f"no demo zoo at {where}; give --base and --pool, or build one: python -m zoo build")
    family = manifest.families[0]
    return str(manifest.base_dir(family)), [str(p) for p in manifest.checkpoint_dirs(family)]


def _sweep(store: Store, args) -> int:
    base, pool = args.base, _csv(args.pool)
    if not base or not pool:
        zoo_base, zoo_pool = _zoo_family(args.zoo_root)
        base, pool = base or zoo_base, pool or zoo_pool
    params = {
        "base": base,
        "pool": pool,
        "method": args.method,
        "param": args.param,
        "values": args.values,
        "n": args.n,
        "subsets": args.subsets,
        **_run_params(args),
    }
    return _follow(store, args, "sweep", params)


def _follow(store: Store, args, kind: str, params: dict) -> int:
    """Submit a study-like job, follow it with a progress bar and its log, and report how it ended."""
    from tqdm import tqdm

    from jobs.runner import JobRunner

    runner = JobRunner(store, workers=args.workers, start=False)
    job_id = runner.submit(kind, {k: v for k, v in params.items() if v is not None})  # validates first
    runner.start()
    for jid in runner.recovered:
        print(f"job {jid} was left running by a process that died; marked interrupted", flush=True)
    print(f"job {job_id}: {kind} {runner.get(job_id).params['study_id']}", flush=True)
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
            f"{kind} {r['study_id']} done: {r['ran']} units run, "
            f"{r['skipped']} already stored ({r['total']} in all)"
        )
        if kind == "sweep":
            print(_sweep_table(store, r["study_id"]))
        return 0
    print(f"{kind} {job.status}: {job.error or ''}".rstrip(), file=sys.stderr)
    return 1


def _sweep_table(store: Store, study_id: str) -> str:
    """Mean score (%) per swept value, min and max over the subsets, beside the base's score."""
    from jobs.sweep import sweep_curve

    curve, base = sweep_curve(store, study_id)
    lines = [f"{curve.attrs['param']:>10}  {'mean %':>8}  {'min %':>8}  {'max %':>8}  merges"]
    for r in curve.itertuples():
        lines.append(f"{r.value:>10g}  {r.mean:>8.2f}  {r.min:>8.2f}  {r.max:>8.2f}  {r.merges:>6}")
    if base is not None:
        lines.append(f"{'base':>10}  {base:>8.2f}")
    return "\n".join(lines)


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


def _report(store: Store, args) -> int:
    from jobs.report import print_report

    if args.latest and args.study_id:
        raise JobError("Give a study id or --latest, not both.")
    sys.stdout.write(print_report(store, None if args.latest else args.study_id, as_json=args.json))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Store(args.db) as store:
            commands = {"study": _study, "sweep": _sweep, "list": _list, "show": _show, "report": _report}
            return commands[args.command](store, args)
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
