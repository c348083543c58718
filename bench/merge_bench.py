"""Merge speed on CPU against the I/O floor and against mergekit, on a ~130M-parameter Llama family.

Every figure is a ratio measured in this one run on this machine: each method's wall time over the I/O floor
(reading every input tensor once and writing one output once), and ours over mergekit's for the same YAML.
Each merge runs as its own process (the CLI, as a user runs it) so its peak RSS is its own.

    python bench/merge_bench.py [--methods a,b] [--mergekit-python /path/to/venv/bin/python] [--gpu]
                                [--repeat N] [--floor-each]

mergekit is not a MergeLab dependency: pass the Python of a throwaway virtualenv that has mergekit installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _family import bench_family  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPARSE = {"density": 0.5}
# Per-model parameters each method is benchmarked with (mergekit-compatible names).
BENCH_PARAMS: dict[str, dict] = {
    "linear": {},
    "task_arithmetic": {},
    "ties": SPARSE,
    "dare_linear": SPARSE,
    "dare_ties": SPARSE,
    "breadcrumbs": {"density": 0.5, "gamma": 0.01},
    "breadcrumbs_ties": {"density": 0.5, "gamma": 0.01},
    "della": {"density": 0.5, "epsilon": 0.1},
    "della_linear": {"density": 0.5, "epsilon": 0.1},
    "model_stock": None,
    "tsvm": None,
    "iso_c": None,
    "iso_cts": None,
    "task_arithmetic_sb": {},
    "ties_sb": SPARSE,
    # mergekit's other methods: weight only where the method takes one
    "slerp": None,
    "nuslerp": {},
    "multislerp": {},
    "karcher": None,
    "sce": None,
    "nearswap": None,
    "arcee_fusion": None,
    "passthrough": None,
}
# Global parameters, how many checkpoints (None: all) and whether the base is given, where not the default.
BENCH_GLOBALS: dict[str, dict] = {"slerp": {"t": 0.4}, "sce": {"select_topk": 0.5}, "nearswap": {"t": 0.001}}
BENCH_MODELS: dict[str, int] = {"slerp": 1, "nuslerp": 2, "nearswap": 1, "arcee_fusion": 1, "passthrough": 1}
NO_BASE = {"linear", "passthrough"}
MERGEKIT_COMPARED = (
    "task_arithmetic",
    "ties",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
    "nearswap",
    "arcee_fusion",
    "passthrough",
)


def recipe_yaml(method: str, base: Path, cks: list[Path]) -> str:
    per_model = BENCH_PARAMS[method]
    models = []
    for ck in cks[: BENCH_MODELS.get(method, len(cks))]:
        entry: dict = {"model": str(ck)}
        if per_model is not None:
            entry["parameters"] = {"weight": 1.0, **per_model}
        models.append(entry)
    doc: dict = {"merge_method": method, "models": models, "dtype": "bfloat16"}
    if method not in NO_BASE:
        doc["base_model"] = str(base)
    if method in BENCH_GLOBALS:
        doc["parameters"] = BENCH_GLOBALS[method]
    return yaml.safe_dump(doc, sort_keys=False)


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """Run cmd; return (wall seconds, peak RSS in GiB of that process tree's largest child, its CPU
    seconds: user + system)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20, usage.ru_utime + usage.ru_stime


def median_of(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Median wall time, the largest peak RSS and the median CPU time of several runs."""
    wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[2] for r in runs)
    return wall, max(r[1] for r in runs), cpu


# The floor reads every byte of every input file once (into one reused buffer) and writes the base's bytes
# as the one output: the least I/O any merge of these inputs does, after the start-up every merge pays
# (Python and torch). safetensors' load_file is no floor: it maps the files, so tensors never touched are
# never read.
IO_FLOOR = """
import sys, torch
from pathlib import Path
dirs = [Path(p) for p in sys.argv[2:]]
files = [f for d in dirs for f in sorted(d.glob("*.safetensors"))]
view = memoryview(bytearray(max(f.stat().st_size for f in files)))
with open(sys.argv[1], "wb") as out:
    for f in files:
        done = 0
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view[done:]):
                done += n
        if f.parent == dirs[0]:
            out.write(view[:done])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--mergekit-python", default=os.environ.get("MERGEKIT_PYTHON"))
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    ap.add_argument("--gpu", action="store_true", help="per-layer GPU timing at Llama-3.1-8B shapes instead")
    ap.add_argument(
        "--floor-each",
        action="store_true",
        help="measure the I/O floor again right before each method and take its ratio to that one (on a "
        "shared machine whose load drifts, a floor from minutes earlier is no baseline)",
    )
    args = ap.parse_args()
    if args.gpu:
        from gpu_layer_bench import main as gpu_main

        gpu_main()
        return

    base, cks = bench_family(args.checkpoints)
    methods = list(BENCH_PARAMS) if args.methods == "all" else args.methods.split(",")
    work = Path(tempfile.mkdtemp(prefix="mergebench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    # Our packages as compiled bytecode, as torch's are (pip compiles what it installs; `make app` and
    # `make test` compile the repository): else a merge also pays for compiling ~100 modules on every start
    # where PYTHONDONTWRITEBYTECODE is set, and the floor, which imports only torch, does not.
    compiled = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    packages = ["merging", "mergelab_home.py"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], cwd=REPO, env=compiled, check=True)
    try:
        floor_cmd = [
            sys.executable,
            "-c",
            IO_FLOOR,
            str(work / "floor.safetensors"),
            str(base),
            *map(str, cks),
        ]
        floor, floor_rss, floor_cpu = median_of([timed(floor_cmd, env) for _ in range(args.repeat)])
        # Header first, then each row as it is measured, so an interrupted run still reports what it did.
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores; family: {base.parent.name}, bf16; "
            f"median of {args.repeat} run(s)"
        )
        print(
            f"I/O floor (read {1 + len(cks)} models once, write one): {floor:.1f} s (CPU {floor_cpu:.1f} s), "
            f"peak RSS {floor_rss:.2f} GiB; load average {os.getloadavg()[0]:.1f}\n"
        )
        floor_col = " I/O floor before it (s) |" if args.floor_each else ""
        head = "| method | seconds | × I/O floor | peak RSS (GiB) | CPU (s) "
        print(head + "| mergekit 0.1.5 (s) | ours / mergekit |" + floor_col)
        print("|---|---|---|---|---|---|---|" + ("---|" if args.floor_each else ""), flush=True)
        for method in methods:
            cfg = work / f"{method}.yml"
            cfg.write_text(recipe_yaml(method, base, cks))
            out = work / f"out-{method}"
            ours_cmd = [sys.executable, "-m", "merging", str(cfg), str(out), "--device", "cpu", "--quiet"]
            mk_out = work / f"mk-{method}"
            mk_cmd = [
                args.mergekit_python,
                "-m",
                "mergekit.scripts.run_yaml",
                str(cfg),
                str(mk_out),
                "--quiet",
            ]
            compare = bool(args.mergekit_python) and method in MERGEKIT_COMPARED
            if args.floor_each:
                floor = median_of([timed(floor_cmd, env) for _ in range(args.repeat)])[0]
            ours_runs, mk_runs = [], []
            for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
                ours_runs.append(timed(ours_cmd, env))
                shutil.rmtree(out, ignore_errors=True)
                if compare:
                    mk_runs.append(timed(mk_cmd, {**os.environ, "HF_HUB_OFFLINE": "1"}))
                    shutil.rmtree(mk_out, ignore_errors=True)
            ours, rss, cpu = median_of(ours_runs)
            mk = median_of(mk_runs)[0] if mk_runs else None
            mk_s = f"{mk:.1f}" if mk else "—"
            rel = f"{ours / mk:.2f}" if mk else "—"
            row = f"| {method} | {ours:.1f} | {ours / floor:.2f} | {rss:.2f} | {cpu:.1f} | {mk_s} | {rel} |"
            print(row + (f" {floor:.1f} |" if args.floor_each else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
