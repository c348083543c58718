"""What isolation and residents cost: worker start-up (first job vs later jobs) and a resident's memory.

    python bench/jobs_bench.py              # both parts
    python bench/jobs_bench.py --part workers
    python bench/jobs_bench.py --part resident

workers: the same small merge job, run through a JobRunner (a worker process per device, the app process
the only DuckDB writer), timed from submit to done: the first job (forkserver start + preload + worker),
later jobs on the warm worker, the job after its worker was SIGKILLed (a fresh worker forked from the warm
forkserver), the first job with MERGELAB_WORKER_START=spawn, and the same merge run in-process without a
runner (the floor). resident: RSS of a process holding one ResidentModel, as today (no copy of the base,
restored from the memory-mapped files) and with the copy older versions kept on the CPU, plus the time of
one restore_base. Each resident variant runs in its own fresh process so RSS figures do not mix. cancel:
seconds from a cancel request to the job's end, for an evaluation mid-scoring and a study mid-unit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1024**2


def _small_family():
    import torch

    from bench._family import build_family

    return build_family(
        "jobs-bench-small",
        hidden=256,
        layers=2,
        intermediate=512,
        vocab=1024,
        checkpoints=2,
        dtype=torch.float32,
    )


def _resident_base() -> Path:
    """A ~125M-parameter Llama base (500 MB in float32) with a tokenizer, cached under bench/.cache."""
    import torch

    from bench._family import build_family
    from tests.tiny_models import tiny_tokenizer

    base, _ = build_family(
        "jobs-bench-resident",
        hidden=1024,
        layers=4,
        intermediate=4096,
        vocab=32000,
        checkpoints=0,
        dtype=torch.float32,
    )
    if not (base / "tokenizer.json").exists():
        tiny_tokenizer().save_pretrained(base)
    return base


def _recipe(base, cks) -> str:
    import yaml

    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(c), "parameters": {"weight": 0.5}} for c in cks],
    }
    return yaml.safe_dump(doc)


def bench_workers(repeats: int) -> dict:
    from jobs import JobRunner
    from jobs.work import TrackedDirectorySink, run_merge_tracked
    from merging import Recipe
    from store import Store

    base, cks = _small_family()
    recipe = _recipe(base, cks)
    tmp = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    os.environ["MERGELAB_HOME"] = str(tmp / "home")
    n = 0

    def timed_job(runner) -> float:
        nonlocal n
        n += 1
        t0 = time.perf_counter()
        jid = runner.submit("merge", {"recipe_yaml": recipe, "output": str(tmp / f"out{n}")})
        (rec,) = runner.wait([jid], timeout=600, interval=0.01)
        assert rec.status == "done", rec.error
        return time.perf_counter() - t0

    out: dict = {}
    with Store(tmp / "db.duckdb") as store:
        os.environ["MERGELAB_WORKER_START"] = "forkserver"
        runner = JobRunner(store, devices=["cpu"])
        out["first_job_s"] = timed_job(runner)
        later = [timed_job(runner) for _ in range(repeats)]
        out["later_job_s"] = statistics.median(later)
        (pid,) = runner.worker_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        out["after_crash_job_s"] = timed_job(runner)
        runner.shutdown()

        runner = JobRunner(store, devices=["cpu"])
        runner.prewarm()
        while not runner.worker_pids():
            time.sleep(0.05)
        time.sleep(8.0)  # the worker is up and importing what jobs need; let it finish
        out["prewarmed_first_job_s"] = timed_job(runner)
        runner.shutdown()

        os.environ["MERGELAB_WORKER_START"] = "spawn"
        runner = JobRunner(store, devices=["cpu"])
        out["spawn_first_job_s"] = timed_job(runner)
        runner.shutdown()
        os.environ["MERGELAB_WORKER_START"] = "forkserver"

    inproc = []
    for i in range(repeats):
        t0 = time.perf_counter()
        sink = TrackedDirectorySink(tmp / f"inproc{i}", lambda p: None, lambda p: None)
        run_merge_tracked(Recipe.from_yaml(recipe), sink, device="cpu")
        inproc.append(time.perf_counter() - t0)
    out["in_process_merge_s"] = statistics.median(inproc)
    return out


def bench_cancel() -> dict:
    """Seconds from a cancel request to the job's end: a running evaluation (3600 items, mid-scoring) and
    a running study (mid-unit), both cooperative (the grace period is set far above)."""
    from jobs import JobRunner
    from store import Store
    from tests.tiny_models import make_family
    from tests.tiny_tasks import tiny_rows, write_task_folder

    tmp = Path(tempfile.mkdtemp(prefix="jobs-bench-cancel-"))
    os.environ["MERGELAB_HOME"] = str(tmp / "home")
    os.environ["MERGELAB_CANCEL_GRACE_S"] = "120"
    base, cks = make_family(tmp / "family", n=3)
    zoo = write_task_folder(tmp / "zoo", {"add": tiny_rows("add", operands=(60, 60))})
    out = {}
    with Store(tmp / "db.duckdb") as store:
        runner = JobRunner(store, devices=["cpu"])

        def cancel_when(jid, ready, settle: float) -> float:
            while not ready(runner.get(jid)):
                time.sleep(0.02)
            time.sleep(settle)
            t0 = time.perf_counter()
            runner.cancel(jid)
            (rec,) = runner.wait([jid], timeout=120, interval=0.01)
            assert rec.status == "cancelled", (rec.status, rec.error)
            return time.perf_counter() - t0

        jid = runner.submit("evaluate", {"model": str(base), "suite": "zoo", "zoo_root": str(zoo)})
        out["evaluation_s"] = cancel_when(jid, lambda r: r.message.startswith("scoring"), 2.0)
        study = {
            "base": str(base),
            "pool": [str(c) for c in cks],
            "methods": ["task_arithmetic", "ties"],
            "sizes": [2, 3],
            "subsets": 3,
            "suite": "zoo",
            "zoo_root": str(zoo),
            "limit": 400,
        }
        jid = runner.submit("study", study)
        out["study_s"] = cancel_when(jid, lambda r: ": merging" in r.message or "scored" in r.message, 0.5)
        runner.shutdown()
    return out


def _resident_child(mode: str) -> None:
    """Runs in a fresh process: print JSON with RSS before/after holding one resident, and restore time."""
    import psutil
    import torch

    from evaluation import ResidentModel

    base = _resident_base()
    proc = psutil.Process()
    import transformers  # noqa: F401  (import cost is not the resident's)

    before = proc.memory_info().rss
    rm = ResidentModel(base, device="cpu")
    copy = None
    if mode == "copy":  # what older versions kept next to the model
        copy = {k: v.detach().to("cpu", copy=True) for k, v in rm.model.state_dict().items()}
    with torch.no_grad():
        for p in rm.model.parameters():
            p.mul_(0.5)  # a merge written into the resident
    t0 = time.perf_counter()
    if copy is None:
        rm.restore_base()
    else:
        rm.model.load_state_dict(copy)
    restore = time.perf_counter() - t0
    after = proc.memory_info().rss
    print(
        json.dumps({"rss_mib": (after - before) / MIB, "weights_mib": rm.nbytes / MIB, "restore_s": restore})
    )


def bench_resident() -> dict:
    _resident_base()  # build once, outside the measured processes
    out = {}
    for mode in ("no-copy", "copy"):
        res = subprocess.run(
            [sys.executable, __file__, "--resident-child", mode],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("workers", "resident", "cancel", "all"), default="all")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--resident-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.resident_child:
        _resident_child(args.resident_child)
        return
    import torch

    torch.set_num_threads(2)
    print(f"cpu threads 2, {os.cpu_count()} cores visible; timings shared with other work on this machine")
    if args.part in ("workers", "all"):
        w = bench_workers(args.repeats)
        print("worker start-up (same small task_arithmetic merge job, submit -> done):")
        print(f"  first job, forkserver cold  {w['first_job_s']:7.2f} s")
        print(f"  later jobs, warm worker     {w['later_job_s']:7.2f} s (median of {args.repeats})")
        print(
            f"  job after SIGKILL of worker {w['after_crash_job_s']:7.2f} s (fresh worker, warm forkserver)"
        )
        print(f"  first job, prewarmed worker {w['prewarmed_first_job_s']:7.2f} s (what the app server does)")
        print(f"  first job, spawn            {w['spawn_first_job_s']:7.2f} s")
        print(f"  same merge in-process       {w['in_process_merge_s']:7.2f} s (no runner, no worker)")
        print(f"  start-up cost of the first job: {w['first_job_s'] - w['later_job_s']:.2f} s")
    if args.part in ("cancel", "all"):
        c = bench_cancel()
        print("cancel request -> job cancelled (cooperative):")
        print(f"  evaluation mid-scoring  {c['evaluation_s']:6.2f} s")
        print(f"  study mid-unit          {c['study_s']:6.2f} s")
    if args.part in ("resident", "all"):
        r = bench_resident()
        a, b = r["no-copy"], r["copy"]
        print(f"resident model ({a['weights_mib']:.0f} MiB of float32 weights on CPU), RSS it adds:")
        rows = (("no copy, restored from mmapped files", a), ("with a CPU copy of the base (before)", b))
        for label, res in rows:
            print(f"  {label}  {res['rss_mib']:7.0f} MiB  restore {res['restore_s']:.2f} s")
        print(f"  ratio {a['rss_mib'] / b['rss_mib']:.2f}")


if __name__ == "__main__":
    main()
