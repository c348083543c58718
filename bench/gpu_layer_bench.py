"""Per-layer merge time of every method at Llama-3.1-8B shapes with 12 checkpoints, on a CUDA GPU.

One decoder layer's tensors (q/k/v/o, gate/up/down, two norms) are made on the device, and each method's
per-tensor function runs on them as the engine calls it. Times are medians of a few runs after a warm-up,
printed with the ratio to task_arithmetic on the same inputs. `--device cpu --scale 0.125` runs a shrunken
layer as a smoke test where there is no GPU.

    python bench/merge_bench.py --gpu            # or: python bench/gpu_layer_bench.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merging.methods import all_methods, resolve_params  # noqa: E402
from merging.methods.base import TensorInputs  # noqa: E402

HIDDEN, KV, INTER = 4096, 1024, 14336
SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.k_proj.weight": (KV, HIDDEN),
    "model.layers.0.self_attn.v_proj.weight": (KV, HIDDEN),
    "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.mlp.gate_proj.weight": (INTER, HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (INTER, HIDDEN),
    "model.layers.0.mlp.down_proj.weight": (HIDDEN, INTER),
    "model.layers.0.input_layernorm.weight": (HIDDEN,),
    "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
}
PER_MODEL = {"weight": 1.0, "density": 0.5, "epsilon": 0.1, "gamma": 0.01}


def layer_inputs(device: str, models: int, scale: float):
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}
    for name, shape in SHAPES.items():
        shape = tuple(max(8, int(s * scale)) for s in shape)
        base = torch.randn(shape, device=device, generator=gen) * 0.02
        cks = [base + torch.randn(shape, device=device, generator=gen) * 0.001 for _ in range(models)]
        out[name] = (base, cks)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_method(spec, layer, device: str, models: int, repeats: int) -> float:
    per_model = [{k: v for k, v in PER_MODEL.items() if spec.param(k) is not None} for _ in range(models)]
    params, model_params = resolve_params(spec, {}, per_model)
    gen = torch.Generator(device=device)
    samples = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        for name, (base, cks) in layer.items():
            gen.manual_seed(i)
            spec.merge(TensorInputs(name, base, cks, model_params, params, gen))
        sync(device)
        if i:  # the first run is a warm-up
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every dimension (smoke tests on CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="all")
    args, _ = ap.parse_known_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA device; use --device cpu --scale 0.125 for a smoke run")
    layer = layer_inputs(args.device, args.models, args.scale)
    specs = [s for s in all_methods() if args.methods == "all" or s.name in args.methods.split(",")]
    times = {s.name: time_method(s, layer, args.device, args.models, args.repeats) for s in specs}
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}; one Llama-3.1-8B layer x{args.scale:g}, {args.models} checkpoints, float32\n")
    print("| method | ms per layer | × task_arithmetic |")
    print("|---|---|---|")
    ref = times.get("task_arithmetic")
    for method, t in times.items():
        print(f"| {method} | {t * 1e3:.1f} | {t / ref:.1f} |" if ref else f"| {method} | {t * 1e3:.1f} | — |")


if __name__ == "__main__":
    main()
