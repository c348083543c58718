"""Time the paper's protocol headless on 2 CPU threads (issue 5: the demo-zoo mini-study in < 15 min).

Default: the demo zoo's zoo-llama base and its 12 checkpoints (built with `python -m zoo build` if missing),
the seven paper configurations, sizes 2, 4, 6, 8, 10, 12, 5 subsets per size, suite `zoo`:
26 subsets x 7 = 182 merges, each scored in memory, plus the base and 12 checkpoints scored once.

    python bench/study_bench.py                       # the mini-study on the demo zoo
    python bench/study_bench.py --base B --pool C1,…  # any pool
    python bench/study_bench.py --tiny                # tiny random models, to time the machinery alone

It runs in a fresh database under bench/.cache/ (so nothing is skipped) and prints wall time, per-unit
figures and the slowest parts. Timing figures belong here, never in tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _zoo_pool(zoo_root: Path, family: str) -> tuple[str, list[str]]:
    """Base and checkpoints of one zoo family, from the zoo's manifest."""
    import zoo

    if not (zoo_root / "tasks").is_dir():
        print(f"building the demo zoo under {zoo_root} ...", flush=True)
        zoo.build_zoo(zoo_root, scale="full")
    manifest = zoo.load_manifest(zoo_root)
    cks = [str(zoo_root / m.path) for m in manifest.models if m.family == family and m.kind != "base"]
    return str(manifest.base_dir(family)), cks


def _tiny_pool(root: Path, n: int) -> tuple[str, list[str], Path]:
    from tests.jobs.helpers import write_zoo_tasks
    from tests.tiny_models import make_family

    base, cks = make_family(root / "family", n=n)
    return str(base), [str(c) for c in cks], write_zoo_tasks(root / "zoo")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base")
    ap.add_argument("--pool", help="comma-separated checkpoints")
    ap.add_argument("--zoo-root", default=os.environ.get("MERGELAB_HOME", "workspace") + "/zoo")
    ap.add_argument("--family", default="llama", help="zoo family (the zoo-llama models)")
    ap.add_argument("--methods", help="default: the paper's seven")
    ap.add_argument("--sizes", default="2,4,6,8,10,12")
    ap.add_argument("--subsets", type=int, default=5)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the issue's 2 cores)")
    ap.add_argument("--tiny", action="store_true", help="12 tiny random checkpoints instead of the zoo")
    ap.add_argument("--backend", choices=("local", "ray"), default="local")
    ap.add_argument("--processes", default="auto", help="local backend: unit processes (1: inside the job)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = ROOT / "bench" / ".cache" / "study"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["MERGELAB_HOME"] = str(work / "home")
    zoo_root = Path(args.zoo_root).absolute()
    if args.tiny:
        base, pool, zoo_root = _tiny_pool(work, 12)
    elif args.base and args.pool:
        base, pool = args.base, args.pool.split(",")
    else:
        base, pool = _zoo_pool(zoo_root, args.family)

    from jobs import JobRunner
    from store import Store

    params = {
        "base": base,
        "pool": pool,
        "methods": args.methods.split(",") if args.methods else None,
        "sizes": [
            s if s == "all" else int(s)
            for s in args.sizes.split(",")
            if int(s if s != "all" else 0) <= len(pool)
        ],
        "subsets": args.subsets,
        "seed": 0,
        "suite": "zoo",
        "zoo_root": str(zoo_root),
        "limit": args.limit,
        "backend": args.backend,
        "processes": args.processes,
        "ray_num_cpus": args.threads,
    }
    with Store(work / "bench.duckdb") as store:
        runner = JobRunner(store, workers=1)
        started = time.perf_counter()
        job_id = runner.submit("study", {k: v for k, v in params.items() if v is not None})
        last = ""
        while not (job := runner.get(job_id)).finished:
            if job.message != last:
                last = job.message
                print(
                    f"\r{time.perf_counter() - started:7.1f} s  {job.progress:6.1%}  {last[:70]:<70}",
                    end="",
                    flush=True,
                )
            time.sleep(1.0)
        wall = time.perf_counter() - started
        runner.shutdown()
        print()
        if job.status != "done":
            print(f"study {job.status}: {job.error}")
            return 1
        merges = store.merges_df(study_id=job.result["study_id"])
        scores = store.eval_rows_df()
        print(f"pool: {len(pool)} checkpoints of {base}")
        print(f"units: {job.result['total']} ({len(merges)} merges, {len(pool) + 1} single models)")
        print(
            f"wall time: {wall:.1f} s ({wall / 60:.2f} min), backend {args.backend}, "
            f"processes {args.processes}, load average at the end {os.getloadavg()[0]:.2f}"
        )
        print(
            f"merge seconds: mean {merges.seconds.mean():.3f}, max {merges.seconds.max():.3f}, "
            f"sum {merges.seconds.sum():.1f}"
        )
        per_model = scores.groupby("fingerprint").seconds.sum()
        print(f"scoring seconds per model: mean {per_model.mean():.2f}, sum {per_model.sum():.1f}")
        by_config = merges.groupby("config").seconds.mean().sort_values()
        print("mean merge seconds by configuration:\n" + by_config.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
