"""Jobs page render time with 1,000 jobs in the database (issue 11: under a second).

Fills a fresh workspace with --jobs finished jobs (launches of one merge+evaluate and two reference
evaluations, each job with a --log-kb log), then renders the Jobs page with Streamlit's AppTest: the first
render (imports, the store opening, the page) and the median of --polls reruns, which is what a browser's
polling costs. Also times the store's two page queries alone.

    python bench/jobs_page_bench.py [--jobs 1000] [--polls 20] [--log-kb 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fill(db, n_jobs: int, log_kb: int) -> None:
    log = "x" * (log_kb * 1024)
    made = 0
    while made < n_jobs:
        group = None
        for kind in ("merge+evaluate", "evaluate", "evaluate"):
            if made >= n_jobs:
                break
            job = db.add_job(kind, {"recipe_yaml": "merge_method: ties\n", "suite": "zoo"}, group_id=group)
            group = group or job
            db.claim_next_job("bench", os.getpid(), kinds=[kind])
            db.append_job_log(job, log)
            db.finish_job(job, "done", result={"mean": 0.5})
            made += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--log-kb", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["MERGELAB_HOME"] = str(home)
        from store import Store

        with Store(home / "mergelab.duckdb") as db:
            fill(db, args.jobs, args.log_kb)
            start = time.perf_counter()
            total, page = db.job_groups_page(limit=20)
            counts = db.job_counts()
            queries = time.perf_counter() - start
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.run()  # Home, so the Jobs page timing below is the page, not the app's first imports
        start = time.perf_counter()
        at.switch_page("app_pages/jobs.py").run()
        first = time.perf_counter() - start
        polls = []
        for _ in range(args.polls):
            start = time.perf_counter()
            at.run()
            polls.append(time.perf_counter() - start)
        errors = [str(e.value) for e in at.exception]
        if errors:
            raise SystemExit(f"the Jobs page failed: {errors[0]}")
    print(f"{counts['done']} jobs in {total} launches; {len(page)} jobs on the first page")
    print(f"store page queries (groups page + counts): {queries * 1000:7.1f} ms")
    print(f"Jobs page, first render:                   {first * 1000:7.1f} ms")
    print(f"Jobs page, rerun (median of {args.polls:3d}):          {statistics.median(polls) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
