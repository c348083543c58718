"""Checkpoint fingerprint speed: first hash (every byte of every tensor, XXH3-128) and the cached reopen.

Builds a synthetic checkpoint of --gb gigabytes (float32 tensors of a Llama-like layout in one safetensors
file), then times, in this one run: reading every byte once with read() (page cache warm), the full
fingerprint, the same bytes through SHA-256 (what a cryptographic hash would cost), and a reopen served from
the fingerprint cache. Prints GB/s and the ratios.

    python bench/fingerprint_bench.py [--gb 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(out: Path, gb: float) -> int:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    (out / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    tensors, total, i = {}, 0, 0
    target = int(gb * (1 << 30))
    while total < target:
        t = torch.randn(1024, 4096, generator=g)
        tensors[f"model.layers.{i // 4}.mlp.w{i % 4}.weight"] = t
        total += t.numel() * 4
        i += 1
    save_file(tensors, out / "model.safetensors")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MERGELAB_HOME"] = str(Path(tmp) / "home")
        from merging import fingerprint as fpmod
        from merging import open_checkpoint

        ck_dir = Path(tmp) / "ck"
        nbytes = build(ck_dir, args.gb)
        file = ck_dir / "model.safetensors"
        gb = nbytes / 1e9

        start = time.perf_counter()
        with open(file, "rb") as fh:
            while fh.read(64 << 20):
                pass
        floor = time.perf_counter() - start

        start = time.perf_counter()
        fp = open_checkpoint(ck_dir).fingerprint
        first = time.perf_counter() - start

        start = time.perf_counter()
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            while chunk := fh.read(64 << 20):
                h.update(chunk)
        sha = time.perf_counter() - start

        fpmod.clear_memo()
        start = time.perf_counter()
        assert open_checkpoint(ck_dir).fingerprint == fp
        cached = time.perf_counter() - start

    print(f"checkpoint: {gb:.2f} GB of tensor data, fingerprint {fp}")
    print(f"read() every byte (copying): {floor:7.3f} s  {gb / floor:6.2f} GB/s")
    print(f"fingerprint, first time:     {first:7.3f} s  {gb / first:6.2f} GB/s  ({first / floor:.2f}x read)")
    print(f"sha256 of the same bytes:    {sha:7.3f} s  {gb / sha:6.2f} GB/s  ({sha / first:.1f}x ours)")
    print(f"fingerprint, cached reopen:  {cached * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
