"""The streaming merge engine (design.md "Data flow of one merge").

Everything that can be refused is refused before a tensor is read or a file written: recipe and parameters
(registry), checkpoint headers (compatibility), output directory (sink). Then tensors stream one name at a
time: read the base and every checkpoint tensor, fit vocabulary rows, move to the device as float32, refuse
NaN/Inf, merge with a generator seeded from (seed, tensor name), cast, hand to the sink, record geometry,
report progress, check for cancellation. Peak memory is about (T + 3) times the largest tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import secrets
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.checkpoint import Checkpoint, open_checkpoint
from merging.compat import CompatReport, TensorSource, fit_source
from merging.errors import DeviceError, MergeCancelled, NonFiniteError, RecipeError
from merging.geometry import GeometryRecorder, MergeStats, wants_spectrum
from merging.memory import Workspace
from merging.methods.base import ModelsFromTaskVectors, TensorInputs
from merging.plan import PlannedTensor
from merging.planner import plan_recipe, validate_recipe
from merging.progress import Progress
from merging.recipe import Recipe
from merging.sinks import Sink
from merging.tokenizer import apply_vocab


@dataclass
class MergeResult:
    """What a finished merge produced. `recipe` carries the seed actually used; `fingerprint` identifies the
    merged weights (canonical recipe + input fingerprints) so evaluations can be cached by it."""

    recipe: Recipe
    stats: MergeStats
    seconds: float
    bytes_read: int
    bytes_written: int
    device: str
    output_path: Path | None
    fingerprint: str
    input_fingerprints: dict[str, str]
    compat: CompatReport | None = field(default=None, repr=False)


def resolve_device(device: str) -> torch.device:
    """ "auto" is cuda when available, else cpu; an unavailable device is a DeviceError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} requested but no CUDA GPU is available; use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed: independent of the order tensors are visited in."""
    return (seed ^ zlib.crc32(name.encode())) & 0xFFFF_FFFF_FFFF_FFFF


def merge_fingerprint(
    method: str,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    base_fingerprint: str | None,
    model_fingerprints: Sequence[str],
    out_dtype: str | None,
    seed: int | None = None,
    device_type: str | None = None,
    plan_digest: str | None = None,
) -> str:
    """Identity of a merged model: method, resolved parameters, inputs by content, output dtype, for
    randomized methods the seed and device type (CPU and CUDA generators draw different masks), and the
    digest of the per-tensor plan (slices, gradients, filters, tokenizer) when given."""
    canon = {
        "v": 1,
        "method": method,
        "params": dict(global_params),
        "base": base_fingerprint,
        "models": [
            {"fp": fp, "params": dict(p)} for fp, p in zip(model_fingerprints, model_params, strict=True)
        ],
        "out_dtype": out_dtype,
        "seed": seed,
        "device": device_type,
        "vocab_policy": "base",
    }
    if plan_digest is not None:
        canon["plan"] = plan_digest
    text = json.dumps(canon, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def run_merge(
    recipe: Recipe,
    sink: Sink,
    *,
    device: str = "auto",
    allow_bin: bool = False,
    spectra: str | Sequence[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoints: Mapping[str, Checkpoint] | None = None,
) -> MergeResult:
    """Merge `recipe` into `sink`. MergeError subclasses for anything the user can fix; MergeCancelled when
    `should_cancel()` turns true (the sink is aborted first, so no output is left)."""
    started = time.perf_counter()
    spec, _, _ = validate_recipe(recipe)
    dev = resolve_device(device)
    if isinstance(spectra, str) and spectra != "all":
        raise RecipeError(f"spectra must be 'all', a list of tensor names, or None; got {spectra!r}")

    given = dict(checkpoints or {})
    opened: list[Checkpoint] = []

    def get(ref: str) -> Checkpoint:
        if ref not in given:
            given[ref] = open_checkpoint(ref, allow_bin=allow_bin)
            opened.append(given[ref])
        return given[ref]

    planned_recipe = None
    try:
        planned_recipe = plan_recipe(recipe, spec, get)  # slices, gradients, filters resolved here
        plan, base, reference = planned_recipe.plan, planned_recipe.base, planned_recipe.reference
        report = planned_recipe.report
        _check_spectra(spectra, {t.name: len(t.shape) for t in plan.tensors})

        seed = recipe.seed
        if seed is None and spec.randomized:
            seed = secrets.randbits(31)  # recorded in the result's recipe, so the output is reproducible
        used = dataclasses.replace(recipe, seed=seed)
        model_refs = planned_recipe.geometry_refs
        models = [planned_recipe.checkpoints[r] for r in model_refs]
        input_fps = {ref: ck.fingerprint for ref, ck in planned_recipe.checkpoints.items()}
        fingerprint = merge_fingerprint(
            spec.name,
            planned_recipe.global_params,
            planned_recipe.model_params,
            base.fingerprint if base else None,
            [m.fingerprint for m in models],
            plan.out_dtype,
            seed if spec.randomized else None,
            dev.type if spec.randomized else None,
            plan_digest=planned_recipe.digest,
        )
        by_ref = planned_recipe.checkpoints
        bytes_total = sum(_input_bytes(planned, base, by_ref) for planned in plan.tensors)

        sink.begin(reference, used, plan)
        try:
            recorder = GeometryRecorder(
                len(models), spectra, labels=[m.ref for m in models], base_label=reference.ref
            )
            bytes_read = bytes_written = 0
            workspace = Workspace(dev)
            workspace.reserve(
                max((len(t.inputs) + 1) * math.prod(t.shape) for t in plan.tensors) if plan.tensors else 0
            )
            for done, planned in enumerate(plan.tensors, start=1):
                if should_cancel is not None and should_cancel():
                    raise MergeCancelled(f"merge cancelled before tensor {planned.name!r}")
                name = planned.name
                slots = workspace.slots(len(planned.inputs) + 1, planned.shape)
                stacked, base_t = slots[:-1], slots[-1]
                for row, item in zip(stacked, planned.inputs, strict=True):
                    _load_into(row, by_ref[item.checkpoint], item.source)
                if base is not None and planned.base is not None:
                    _load_into(base_t, base, planned.base)
                else:
                    base_t.copy_(stacked[0])
                if planned.vocab is not None:  # a merged tokenizer: complete the rows an input lacks
                    apply_vocab(
                        planned, base_t if base is not None and planned.base is not None else None, stacked
                    )
                bytes_read += _input_bytes(planned, base, by_ref)
                gparams_t, mparams_t = planned.params, planned.model_params
                gen = torch.Generator(device=dev).manual_seed(tensor_seed(seed or 0, name))
                has_base = base is not None and planned.base is not None
                if has_base:  # task vectors formed once, in place; methods and geometry share them
                    stacked.sub_(base_t)
                    inputs = TensorInputs(
                        name,
                        base_t,
                        ModelsFromTaskVectors(base_t, stacked),
                        mparams_t,
                        gparams_t,
                        gen,
                        stacked,
                    )
                else:  # linear without a base averages the weights themselves
                    inputs = TensorInputs(name, None, list(stacked.unbind(0)), mparams_t, gparams_t, gen)
                try:
                    merged = spec.merge(inputs)
                except (RuntimeError, ValueError):
                    recorder.refuse_nonfinite_inputs(name, base_t, stacked)  # names a NaN input
                    raise
                merged = _check_shape(merged, planned, spec.name)
                if merged.untyped_storage().data_ptr() == slots.untyped_storage().data_ptr():
                    merged = merged.clone()  # the stats below reuse the inputs' memory in place
                if not output_is_finite(merged):  # checked before the sink sees it (issue 11)
                    recorder.refuse_nonfinite_inputs(name, base_t, stacked)  # names a NaN input
                    raise NonFiniteError(
                        f"the method produced NaN/Inf in tensor {name!r}; check its parameters "
                        "(e.g. weights summing to 0)"
                    )
                out = merged.to(planned.dtype)
                sink.write(name, out)
                bytes_written += out.numel() * out.element_size()
                del out
                if (
                    tuple(i.checkpoint for i in planned.inputs) == model_refs
                ):  # geometry compares the recipe's models
                    recorder.record(name, base_t, stacked, merged, task_vectors=has_base)
                del base_t, stacked, slots, merged, inputs
                if on_progress is not None:
                    on_progress(Progress(done, len(plan.tensors), bytes_read, bytes_total, name))
            if should_cancel is not None and should_cancel():
                raise MergeCancelled("merge cancelled before the output was committed")
            result = MergeResult(
                recipe=used,
                stats=recorder.finish(),
                seconds=0.0,
                bytes_read=bytes_read,
                bytes_written=bytes_written,
                device=str(dev),
                output_path=None,
                fingerprint=fingerprint,
                input_fingerprints=input_fps,
                compat=report,
            )
            result.seconds = time.perf_counter() - started
            result.output_path = sink.commit(result)
        except BaseException:
            sink.abort()
            raise
        result.seconds = time.perf_counter() - started
        return result
    finally:
        if planned_recipe is not None:
            planned_recipe.cleanup()
        for ck in opened:
            ck.close()


def output_is_finite(merged: torch.Tensor) -> bool:
    """No NaN/Inf in a merged tensor: one sum pass, a full scan only when the sum is not finite (a finite
    tensor whose float64 sum overflows still passes)."""
    return math.isfinite(float(merged.sum(dtype=torch.float64))) or bool(torch.isfinite(merged).all())


def _input_bytes(planned: PlannedTensor, base: Checkpoint | None, by_ref: Mapping[str, Checkpoint]) -> int:
    """Bytes read from disk for one output tensor: the base's tensor and every input's stored tensor."""
    n = base.tensors[planned.base.name].nbytes if base is not None and planned.base is not None else 0
    return n + sum(by_ref[i.checkpoint].tensors[i.source.name].nbytes for i in planned.inputs)


def _load_into(dest: torch.Tensor, ck: Checkpoint, src: TensorSource) -> None:
    """Read one input tensor into `dest` (float32 on the device): the dtype cast and the copy are one pass,
    vocabulary rows fitted on the way."""
    dest.copy_(fit_source(ck.read(src.name), src))


def _check_shape(merged: torch.Tensor, planned: PlannedTensor, method: str) -> torch.Tensor:
    if tuple(merged.shape) != planned.shape:
        raise RuntimeError(
            f"method {method} returned shape {tuple(merged.shape)} for {planned.name!r}, "
            f"expected {planned.shape}"
        )
    return merged.float()


def _check_spectra(spectra: str | Sequence[str] | None, ndims: Mapping[str, int]) -> None:
    """Every requested name or pattern must pick at least one matrix, so typos fail before the merge."""
    if not spectra or spectra == "all":
        return
    for pat in spectra:
        if not any(wants_spectrum(n, nd, [pat]) for n, nd in ndims.items()):
            raise RecipeError(f"spectra: no 2-D tensor matches {pat!r}")
