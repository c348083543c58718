"""Real scale (issue 10): merge N checkpoints with Llama-3.1-8B's tensor shapes under a memory budget, and
report each method's wall time and peak RSS beside mergekit 0.1.5's on the same input.

The family (cached under $MERGELAB_HOME/cache/bench/) has 8B's full-size tensors: embed_tokens and lm_head
of 128256 x 4096, one full decoder layer (q/o 4096 x 4096, k/v 1024 x 4096, gate/up 14336 x 4096, down
4096 x 14336, norms), bf16, about 2.5 GB per checkpoint. Checkpoints are the base plus seeded dense noise.

Peak RSS is what the OS counts for the merging process (mapped file pages included): its VmHWM, sampled
from /proc every 0.1 s until it exits (exec starts a fresh count, so the bench's own memory is not in it);
wait4()'s ru_maxrss, which Linux carries over from the forking bench process, is logged as an upper bound.
The same figures for MergeLab and for mergekit. Each row also gives the load average at the start and the
end of the merge (the machine is shared), and with --check-load whether transformers loads the output
(AutoModelForCausalLM in bfloat16 on CPU, one forward pass, finite logits). --log appends every figure as
one JSON line.

    python bench/scale_bench.py [--n 12] [--methods task_arithmetic,ties] [--max-memory 5GiB]
                                [--mergekit-python /work/mk-venv/bin/python] [--engines mergelab,mergekit]
                                [--check-load] [--log runs.jsonl] [--device cpu]

Disk: (N + 1) x 2.5 GB for the family plus one output at a time; the script checks free space first and
says how many checkpoints fit when N does not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mergelab_home import cache_dir  # noqa: E402
from merging.budget import parse_memory  # noqa: E402

HIDDEN, INTER, VOCAB, KV = 4096, 14336, 128256, 1024
SHAPES = {
    "model.embed_tokens.weight": (VOCAB, HIDDEN),
    "model.layers.0.input_layernorm.weight": (HIDDEN,),
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.k_proj.weight": (KV, HIDDEN),
    "model.layers.0.self_attn.v_proj.weight": (KV, HIDDEN),
    "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
    "model.layers.0.mlp.gate_proj.weight": (INTER, HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (INTER, HIDDEN),
    "model.layers.0.mlp.down_proj.weight": (HIDDEN, INTER),
    "model.norm.weight": (HIDDEN,),
    "lm_head.weight": (VOCAB, HIDDEN),
}
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTER,
    "num_hidden_layers": 1,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": VOCAB,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}
CHECKPOINT_BYTES = sum(math.prod(s) for s in SHAPES.values()) * 2
DENSE = {"density": 0.5}
# Per-model parameters of each method (mergekit's names); None: the method takes none.
PARAMS: dict[str, dict | None] = {
    "task_arithmetic": {},
    "ties": DENSE,
    "dare_ties": DENSE,
    "model_stock": None,
    "iso_c": None,
    "tsvm": None,
    "ties_sb": DENSE,
    "linear": {},
    "dare_linear": DENSE,
    "breadcrumbs": {"density": 0.5, "gamma": 0.01},
    "della": {"density": 0.5, "epsilon": 0.1},
    "iso_cts": None,
    "task_arithmetic_sb": {},
}
DEFAULT_METHODS = ("task_arithmetic", "ties", "dare_ties", "model_stock", "iso_c", "tsvm", "ties_sb")
IN_MERGEKIT = {
    "task_arithmetic",
    "ties",
    "dare_ties",
    "model_stock",
    "linear",
    "dare_linear",
    "breadcrumbs",
    "della",
}


def _header() -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in SHAPES.items():
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _key(name: str, a: int) -> int:
    return zlib.crc32(f"{name}:{a}:-1".encode())  # the base's chunk seed (kept from the first builds)


def build_family(root: Path, n: int, noise: float = 0.002) -> tuple[Path, list[Path]]:
    """Base and n checkpoints, bf16, all missing ones written together chunk by chunk (skips complete
    ones). Checkpoint i is the base plus one seeded Gaussian noise chunk rotated by a per-checkpoint shift:
    distinct, nearly orthogonal task vectors at the cost of one random draw per chunk, not one per
    checkpoint (building twelve 2.5 GB checkpoints on two shared cores otherwise takes an hour)."""
    base = root / "base"
    cks = [root / f"ft{i:02d}" for i in range(n)]
    todo = [(i, d) for i, d in enumerate([base, *cks]) if not (d / "complete").exists()]
    if not todo:
        return base, cks
    start = time.perf_counter()
    handles = []
    for _, d in todo:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(CONFIG, indent=2))
        fh = open(d / "model.safetensors", "wb")  # noqa: SIM115 - closed below
        fh.write(_header())
        handles.append(fh)
    try:
        for name, shape in SHAPES.items():
            rows = shape[0] if len(shape) > 1 else 1
            row = math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)
            step = max(1, (32 << 20) // row)
            for a in range(0, rows, step):
                b = min(rows, a + step)
                cshape = (b - a, *shape[1:]) if len(shape) > 1 else shape
                if name.endswith("norm.weight"):
                    base_t = torch.ones(cshape)
                else:
                    base_t = (
                        torch.randn(cshape, generator=torch.Generator().manual_seed(_key(name, a))) * 0.02
                    )
                draw = torch.randn(cshape, generator=torch.Generator().manual_seed(_key(name, a) ^ 0x5EED))
                draw = draw.mul_(noise).reshape(-1)
                for (i, _), fh in zip(todo, handles, strict=True):
                    t = base_t if i == 0 else base_t + torch.roll(draw, 7919 * i).view(cshape)
                    fh.write(memoryview(t.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()))
    finally:
        for fh in handles:
            fh.close()
    for _, d in todo:
        (d / "complete").write_text("ok")
    print(f"  built {len(todo)} checkpoints in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return base, cks


def recipe(method: str, base: Path, cks: list[Path]) -> str:
    per = PARAMS[method]
    models = [
        {"model": str(c), **({"parameters": {"weight": 1.0, **per}} if per is not None else {})} for c in cks
    ]
    doc: dict = {"merge_method": method, "base_model": str(base), "models": models, "dtype": "bfloat16"}
    return yaml.safe_dump(doc, sort_keys=False)


def _status(pid: int, key: str) -> int:
    """A size field of /proc/<pid>/status (VmRSS, VmHWM) in bytes; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(
    cmd: list[str], timeout: float, rss_limit: int, env: dict | None = None, log: Path | None = None
) -> dict:
    """Run one merge as a child: {"seconds" (None on failure), "peak_gib" (the child's own VmHWM),
    "maxrss_gib" (wait4's, an upper bound), "why" (why it failed), "load" (1-min load at start and end)}.

    A child over `rss_limit` bytes is stopped (the machine is shared: an OOM kill could take others'
    processes with it); its peak is then reported as at least the limit."""
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    err_path = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"scale-bench-{os.getpid()}.err"
    why, hwm = "", 0
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            hwm = max(hwm, _status(proc.pid, "VmHWM"))
            if time.perf_counter() - start > timeout:
                why = f"stopped after {timeout:.0f} s"
            elif _status(proc.pid, "VmRSS") > rss_limit:
                why = (
                    f"stopped above {rss_limit / 2**30:.0f} GiB RSS after {time.perf_counter() - start:.0f} s"
                )
            if why:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    result = {
        "seconds": None if why else seconds,
        "peak_gib": hwm / 2**30,
        "maxrss_gib": usage.ru_maxrss / 2**20,
        "why": why,
        "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }
    code = os.waitstatus_to_exitcode(status)
    if not why and code != 0:
        tail = err_path.read_text(errors="replace").strip()
        last = tail.splitlines()[-1] if tail else ""
        result["seconds"], result["why"] = None, f"exit {code}: {last[-200:]}"
    return result


LOAD_CHECK = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
with torch.no_grad():
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
assert logits.shape == (1, 4, model.config.vocab_size), logits.shape
assert torch.isfinite(logits.float()).all(), "non-finite logits"
print(type(model).__name__, model.dtype, tuple(logits.shape))
"""


def check_load(out: Path) -> str:
    """Whether transformers loads a merged output and runs it: 'yes (…)' or 'no: <why>'."""
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_CHECK, str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=REPO,
    )
    if proc.returncode == 0:
        return f"yes ({proc.stdout.strip()})"
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return f"no: {tail[-200:]}"


def _cell(r: dict | None) -> tuple[str, str]:
    if r is None:
        return "—", "—"
    secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else f"failed ({r['why']})"
    return f"{secs} (load {r['load'][0]}-{r['load'][1]})", f"{r['peak_gib']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="checkpoints (default 12)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--max-memory", default="5GiB", help="MergeLab's budget (default 5GiB)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mergekit-python", default=os.environ.get("MERGEKIT_PYTHON"))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per merge before it is stopped")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--engines", default="mergelab,mergekit", help="which to run (default both)")
    ap.add_argument("--check-load", action="store_true", help="load each MergeLab output with transformers")
    ap.add_argument("--log", help="append every figure as one JSON line to this file")
    ap.add_argument(
        "--progress", action="store_true", help="keep MergeLab's progress bar in <runs>/<method>-mergelab.log"
    )
    ap.add_argument(
        "--rss-limit",
        default="14GiB",
        help="stop a merge whose RSS passes this (shared machine; default 14GiB)",
    )
    args = ap.parse_args()

    root = cache_dir("bench", "llama8b-shapes")
    have = sum((root / d / "complete").exists() for d in ["base", *[f"ft{i:02d}" for i in range(args.n)]])
    need = (args.n + 1 - have) * CHECKPOINT_BYTES + 2 * CHECKPOINT_BYTES  # family + outputs
    free = shutil.disk_usage(root).free
    if need > free:
        fit = max(0, int((free - 2 * CHECKPOINT_BYTES) // CHECKPOINT_BYTES) + have - 1)
        sys.exit(
            f"not enough disk under {root}: need {need / 1e9:.1f} GB, "
            f"free {free / 1e9:.1f} GB; --n {fit} fits"
        )
    base, cks = build_family(root, args.n)
    if args.build_only:
        return
    work = root.parent / "llama8b-runs"
    work.mkdir(exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"load {os.getloadavg()[0]:.1f}; "
        f"family: Llama-3.1-8B shapes (embed + head 128256x4096, one decoder layer), bf16, "
        f"{args.n} checkpoints of {CHECKPOINT_BYTES / 1e9:.2f} GB; MergeLab --max-memory {args.max_memory} "
        f"on {args.device}\n"
    )
    engines = set(args.engines.split(","))
    limit = parse_memory(args.rss_limit)
    print(
        "| method | MergeLab s | MergeLab peak RSS GiB | loads | mergekit 0.1.5 s | mergekit peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    for method in args.methods.split(","):
        cfg = work / f"{method}.yml"
        cfg.write_text(recipe(method, base, cks))
        ours = mk = None
        loads = "—"
        if "mergelab" in engines:
            out = work / f"out-{method}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "merging", str(cfg), str(out), "--device", args.device]
            cmd += ["--max-memory", args.max_memory] + ([] if args.progress else ["--quiet"])
            ours = run(
                cmd, args.timeout, limit, log=work / f"{method}-mergelab.log" if args.progress else None
            )
            if args.check_load and ours["seconds"] is not None:
                loads = check_load(out)
            shutil.rmtree(out, ignore_errors=True)
        if args.mergekit_python and "mergekit" in engines and method in IN_MERGEKIT:
            mk_out = work / f"mk-{method}"
            shutil.rmtree(mk_out, ignore_errors=True)
            cmd = [args.mergekit_python, "-m", "mergekit.scripts.run_yaml", str(cfg), str(mk_out), "--quiet"]
            if args.device.startswith("cuda"):
                cmd.append("--cuda")
            mk = run(cmd, args.timeout, limit, {**os.environ, "HF_HUB_OFFLINE": "1"})
            shutil.rmtree(mk_out, ignore_errors=True)
        (ours_s, ours_rss), (mk_s, mk_rss) = _cell(ours), _cell(mk)
        print(f"| {method} | {ours_s} | {ours_rss} | {loads} | {mk_s} | {mk_rss} |", flush=True)
        if args.log:
            entry = {
                "method": method,
                "n": args.n,
                "max_memory": args.max_memory,
                "device": args.device,
                "mergelab": ours,
                "loads": loads,
                "mergekit": mk,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with open(args.log, "a") as fh:
                fh.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
