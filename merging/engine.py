"""The streaming merge engine (design.md "Data flow of one merge").

Everything that can be refused is refused before a tensor is read or a file written: recipe and parameters
(registry), checkpoint headers (compatibility), output directory (sink). Then tensors stream one name at a
time: read the base and every checkpoint tensor, fit vocabulary rows, move to the device as float32, refuse
NaN/Inf, merge with a generator seeded from (seed, tensor name), cast, hand to the sink, record geometry,
report progress, check for cancellation. Peak memory is about (T + 3) times the largest tensor. Task
arithmetic on a CPU takes the stored route instead (merging/stored.py): the stored rows in, one native pass,
the output and the geometry out. Where the budget allows, the subspace methods' matrices and the boosted
methods' boosts merge on two tensor lanes at once (threads.TensorLanes; the same bytes), written and
recorded in plan order.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.budget import LANE_PENDING, LANE_STACKS, default_budget, parse_memory, plan_memory
from merging.checkpoint import Checkpoint, open_checkpoint
from merging.compat import CompatReport
from merging.errors import DeviceError, MergeCancelled, NonFiniteError, RecipeError
from merging.geometry import BlockGeometry, GeometryRecorder, MergeStats, TensorSums, wants_spectrum
from merging.memory import return_large_frees_to_os
from merging.methods.base import MethodSpec, ModelsFromTaskVectors, TensorInputs
from merging.methods.blocks import Block, RowwiseMerger, TensorContext, merger_for
from merging.native import convert
from merging.plan import MergePlan, PlannedTensor
from merging.planner import plan_recipe, validate_recipe
from merging.progress import Progress
from merging.reader import HeldStacks, ReadUnit, iterate_units
from merging.recipe import Recipe
from merging.sinks import Sink
from merging.stored import Weighted, merge_stored, stored_dtype, stored_terms, widened
from merging.threads import TensorLanes
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
    max_memory: int | str | None = None,
) -> MergeResult:
    """Merge `recipe` into `sink`. MergeError subclasses for anything the user can fix; MergeCancelled when
    `should_cancel()` turns true (the sink is aborted first, so no output is left).

    `max_memory` is the memory budget (bytes or "5GiB"; None: a safe share of what is free, budget.py).
    Stages: plan (recipe, compatibility, budget, row blocks) → read (prefetching reader) → compute (the
    method on a block) → write (the sink) → observe (geometry, progress, cancel)."""
    started = time.perf_counter()
    spec, _, _ = validate_recipe(recipe)
    dev = resolve_device(device)
    if isinstance(spectra, str) and spectra != "all":
        raise RecipeError(f"spectra must be 'all', a list of tensor names, or None; got {spectra!r}")
    budget = parse_memory(max_memory) if max_memory is not None else default_budget(dev)

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
        plan = plan_memory(planned_recipe.plan, spec, budget, dev)  # row blocks, tensor lanes
        if any(len(t.row_blocks) > 1 for t in plan.tensors):
            # else freed blocks stay in the heap and the budget is not what RSS shows. Only then: the policy
            # stays for the process, and it costs every later large allocation a fresh mapping (scoring a
            # zoo model in the same process measured 20-30% slower with it)
            return_large_frees_to_os()
        inputs = _Inputs(planned_recipe.base, planned_recipe.checkpoints, tuple(planned_recipe.geometry_refs))
        reference, report = planned_recipe.reference, planned_recipe.report
        _check_spectra(spectra, {t.name: len(t.shape) for t in plan.tensors})
        seed = recipe.seed
        if seed is None and spec.randomized:
            seed = secrets.randbits(31)  # recorded in the result's recipe, so the output is reproducible
        used = dataclasses.replace(recipe, seed=seed)
        models = [inputs.by_ref[r] for r in inputs.model_refs]
        fingerprint = merge_fingerprint(
            spec.name,
            planned_recipe.global_params,
            planned_recipe.model_params,
            inputs.base.fingerprint if inputs.base else None,
            [m.fingerprint for m in models],
            plan.out_dtype,
            seed if spec.randomized else None,
            "any" if spec.randomized else None,  # masks hash seed and position: the same on any device
            plan_digest=planned_recipe.digest,
        )
        observer = _Observer(
            GeometryRecorder(len(models), spectra, labels=[m.ref for m in models], base_label=reference.ref),
            plan,
            {t.name: input_bytes(t, inputs.base, inputs.by_ref) for t in plan.tensors},
            on_progress,
            should_cancel,
        )
        sink.begin(reference, used, plan)
        try:
            bytes_written = _stream(plan, spec, inputs, sink, dev, seed or 0, observer)
            observer.check_cancel("before the output was committed")
            result = MergeResult(
                recipe=used,
                stats=observer.recorder.finish(),
                seconds=time.perf_counter() - started,
                bytes_read=observer.bytes_read,
                bytes_written=bytes_written,
                device=str(dev),
                output_path=None,
                fingerprint=fingerprint,
                input_fingerprints={ref: ck.fingerprint for ref, ck in inputs.by_ref.items()},
                compat=report,
            )
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


@dataclass(frozen=True)
class _Inputs:
    """The opened checkpoints a plan reads: the base (None without one), every checkpoint by its ref, and
    the refs whose task vectors geometry compares (the recipe's models)."""

    base: Checkpoint | None
    by_ref: Mapping[str, Checkpoint]
    model_refs: tuple[str, ...]


@dataclass
class _Work:
    """One output tensor in flight: its merger (None: merged by spec.merge) and what was read so far."""

    planned: PlannedTensor
    merger: Any
    passes: int
    blocks: list[tuple[int, int]]
    geometry: BlockGeometry | None = None
    assembled: torch.Tensor | None = None
    stored: Weighted | None = None  # the weighted sum its stored rows are merged by (merging/stored.py)


def read_units(
    plan: MergePlan,
    spec: MethodSpec,
    opened: _Inputs,
    seed: int,
    stored_when: Callable[[PlannedTensor, Any], Weighted | None] | None = None,
    lanes: bool = False,
) -> tuple[list, list]:
    """Read stage input: the units in the order the engine consumes them, each tensor's statistic passes
    (re-reads of its blocks) before its merge pass. Returns (units, work per unit). `stored_when(planned,
    merger)`: the weighted sum a tensor is merged by from its stored rows (merging/stored.py), or None.
    `lanes`: the tensors the plan puts on a lane are read as held units (merged on a tensor lane)."""
    units: list[ReadUnit] = []
    works: list[tuple[_Work, int]] = []  # (work, pass_no; -1 is the merge pass)
    for index, planned in enumerate(plan.tensors):
        blocks = planned.row_blocks
        merger = _merger_for(spec, planned, seed, len(blocks))
        passes = merger.passes if merger is not None and hasattr(merger, "passes") else 0
        work = _Work(planned, merger, passes, blocks)
        work.stored = stored_when(planned, merger) if stored_when is not None else None
        base = (opened.base, planned.base) if opened.base is not None and planned.base is not None else None
        inputs = tuple((opened.by_ref[i.checkpoint], i.source) for i in planned.inputs)
        # the reader forms the task vectors, except where a merged tokenizer first completes the rows
        task_vectors = base is not None and planned.vocab is None
        reread = passes if len(blocks) > 1 else 0  # one block: its passes reuse the stack already read
        backward = _backward_passes(merger, reread)
        for pass_no in [*range(reread), -1]:
            for start, stop in blocks[::-1] if pass_no >= 0 and backward[pass_no] else blocks:
                shape = (stop - start, *planned.shape[1:]) if len(planned.shape) >= 2 else planned.shape
                units.append(
                    ReadUnit(
                        index,
                        planned.name,
                        start,
                        stop,
                        shape,
                        base,
                        inputs,
                        planned.prefetch,
                        task_vectors,
                        stored=stored_dtype(planned, opened.base) if work.stored is not None else None,
                        held=lanes and planned.lane and len(blocks) == 1 and work.stored is None,
                    )
                )
                works.append((work, pass_no))
    return units, works


def _backward_passes(merger, passes: int) -> list[bool]:
    """Which statistic passes read their blocks last to first. A pass whose statistic does not depend on
    the order (`merger.orderless`) runs against the direction of the pass after it, so it ends on the
    blocks that pass reads first, while they are still in the page cache (with LRU, a forward rescan of a
    tensor larger than the cache hits nothing). The merge pass is always first to last."""
    orderless = getattr(merger, "orderless", None)
    backward = [False] * passes
    after = False  # the merge pass: forward
    for p in reversed(range(passes)):
        backward[p] = orderless is not None and orderless(p) and not after
        after = backward[p]
    return backward


def _merger_for(spec: MethodSpec, planned: PlannedTensor, seed: int, n_blocks: int):
    """The block merger of a tensor (blocks.merger_for), or None: merged whole by spec.merge. A row-wise
    method's single block is merged by spec.merge directly (the same thing, one call less), unless its
    merger is a weighted sum the stored route may take (gathered.MeanMerger)."""
    ctx = TensorContext(
        planned.name,
        planned.shape,
        planned.params,
        planned.model_params,
        len(planned.inputs),
        tensor_seed(seed, planned.name),
        n_blocks,
    )
    merger = merger_for(spec, ctx)
    if isinstance(merger, RowwiseMerger) and n_blocks == 1 and not hasattr(merger, "weighted_sum_terms"):
        return None
    return merger


def _stream(
    plan: MergePlan,
    spec: MethodSpec,
    opened: _Inputs,
    sink: Sink,
    dev: torch.device,
    seed: int,
    observer: _Observer,
) -> int:
    """Read → compute → write → observe, unit by unit; returns the bytes written."""
    recorder = observer.recorder

    def stored_when(planned: PlannedTensor, merger) -> Weighted | None:
        spectrum = recorder.wants_spectrum(planned.name, len(planned.shape))
        return stored_terms(merger, planned, opened.base, opened.by_ref, dev, spectrum)

    lanes = TensorLanes() if any(t.lane for t in plan.tensors) else None
    units, works = read_units(plan, spec, opened, seed, stored_when, lanes=lanes is not None)
    held_numel = max((u.numel for u in units if u.held), default=0)
    held = HeldStacks(LANE_STACKS, held_numel, dev) if held_numel else None
    has_base = opened.base is not None
    in_order = _InOrder(sink, observer, spec, held, opened.model_refs)
    try:
        for (unit, stack), (work, pass_no) in zip(iterate_units(units, dev, held=held), works, strict=True):
            planned = work.planned
            observer.check_cancel(f"before tensor {planned.name!r}")
            base_in = has_base and planned.base is not None
            if unit.held and lanes is not None:
                inputs = _block_inputs(planned, stack, base_in, seed, dev, unit.task_vectors)
                block = Block(unit.start, unit.stop, inputs, _row_numel(planned.shape))
                in_order.add(_Finish(work, unit, stack, block, base_in, _on_lane(lanes, work, block)))
                continue
            deferred = in_order.pending and _deferrable(work, pass_no, recorder)
            if in_order.pending and not deferred:
                in_order.drain()  # outputs go out in plan order
            if unit.stored:
                done = _merge_stored(work, unit, stack, observer, opened.model_refs, record=not deferred)
                if done is not None:
                    out, sums = done
                    if deferred:  # written and recorded after the lanes' tensors before it
                        in_order.add(_Finish(work, unit, None, None, base_in, out=out, sums=sums))
                    else:
                        in_order.bytes_written += _write(sink, work, unit, out)
                        observer.progress(work, unit.start, unit.stop)
                    continue
                stack = widened(stack)  # a NaN or Inf: the float32 route names it or refuses the output
            if planned.vocab is not None:  # a merged tokenizer: complete the rows an input lacks (never cut)
                apply_vocab(planned, stack[-1] if base_in else None, stack[:-1])
            inputs = _block_inputs(planned, stack, base_in, seed, dev, unit.task_vectors)
            block = Block(unit.start, unit.stop, inputs, _row_numel(planned.shape))
            if pass_no >= 0:
                work.merger.observe(pass_no, block)
                continue
            if len(work.blocks) == 1 and work.merger is not None:
                for p in range(work.passes):
                    work.merger.observe(p, block)
            merged = _compute(spec, work, block, stack, observer, planned)
            out = _checked_output(merged, planned, stack, observer)
            if deferred:  # after the lanes' tensors before it: its sums now, while its stack is valid
                sums = _sums(observer, work, stack, merged, base_in, opened.model_refs)
                in_order.add(_Finish(work, unit, None, block, base_in, out=out, sums=sums))
                continue
            in_order.bytes_written += _write(sink, work, unit, out)
            del out
            observer.observe(work, block, stack, merged, base_in, opened.model_refs)
            del merged, inputs, block, stack
        in_order.drain()
    finally:
        if lanes is not None:
            lanes.close()
    return in_order.bytes_written


def _on_lane(lanes: TensorLanes, work: _Work, block: Block) -> Future:
    """Merge a whole tensor on a tensor lane: its statistic passes there too, unless its merger keeps them
    on the engine's thread (`lane_passes` False: they run here, now, at this thread's count)."""
    passes = work.passes
    if not getattr(work.merger, "lane_passes", True):
        for p in range(passes):
            work.merger.observe(p, block)
        passes = 0
    return lanes.submit(functools.partial(_merge_whole, work.merger, passes, block))


def _merge_whole(merger, passes: int, block: Block) -> torch.Tensor:
    """A tensor lane's job: a whole tensor's statistic passes and its merge."""
    for p in range(passes):
        merger.observe(p, block)
    return merger.merge(block)


# A tensor that is not merged on a lane waits for the lanes' tensors before it to be written, unless its
# output is at most this large: then it is merged at once and written after them (up to DEFERRED_MAX such).
DEFER_MAX_BYTES = 16 << 20
DEFERRED_MAX = 16


def _deferrable(work: _Work, pass_no: int, recorder: GeometryRecorder) -> bool:
    """Whether a unit that is not on a lane may be merged while lane tensors before it are pending: a small
    whole tensor without a spectrum to record, merged now and written in its turn."""
    planned = work.planned
    return (
        pass_no < 0
        and len(work.blocks) == 1
        and planned.vocab is None
        and 4 * math.prod(planned.shape) <= DEFER_MAX_BYTES
        and not recorder.wants_spectrum(planned.name, len(planned.shape))
    )


def _sums(
    observer: _Observer,
    work: _Work,
    stack: torch.Tensor,
    merged: torch.Tensor,
    has_base: bool,
    model_refs: tuple[str, ...],
) -> TensorSums | None:
    """A whole tensor's geometry sums taken now, recorded in its turn; None where it records none."""
    if not observer.wants_geometry(work.planned, model_refs):
        return None
    return observer.recorder.stack_sums(work.planned.name, stack, merged, task_vectors=has_base)


@dataclass
class _Finish:
    """A whole tensor merged ahead of its turn: on a tensor lane (`job`, its held `stack`), or at once while
    lane tensors before it were pending (`out` and `sums` ready)."""

    work: _Work
    unit: ReadUnit
    stack: torch.Tensor | None
    block: Block | None
    has_base: bool
    job: Future | None = None
    out: torch.Tensor | None = None
    sums: TensorSums | None = None


class _InOrder:
    """Tensors merged ahead of their turn, written and recorded in plan order (the output files and the
    geometry's sums are then those of one tensor after the other): at most LANE_PENDING on lanes, and up to
    DEFERRED_MAX small ones merged at once behind them."""

    def __init__(
        self,
        sink: Sink,
        observer: _Observer,
        spec: MethodSpec,
        held: HeldStacks | None,
        model_refs: tuple[str, ...],
    ):
        self.sink, self.observer, self.spec = sink, observer, spec
        self.held, self.model_refs = held, model_refs
        self.pending: deque[_Finish] = deque()
        self.bytes_written = 0

    def add(self, item: _Finish) -> None:
        self.pending.append(item)
        while self.pending and (self._full() or self._head_done()):
            self._finish(self.pending.popleft())

    def _full(self) -> bool:
        """More lane tensors held than LANE_PENDING (their stacks: the reader would wait for one), or more
        small tensors merged at once waiting behind them than DEFERRED_MAX."""
        lanes = sum(1 for item in self.pending if item.job is not None)
        return lanes > LANE_PENDING or len(self.pending) - lanes > DEFERRED_MAX

    def drain(self) -> None:
        while self.pending:
            self._finish(self.pending.popleft())

    def _head_done(self) -> bool:
        head = self.pending[0]
        return head.job is None or head.job.done()

    def _finish(self, item: _Finish) -> None:
        work, unit, block = item.work, item.unit, item.block
        planned = work.planned
        if item.job is None:  # merged at once: its output and sums are ready
            self.bytes_written += _write(self.sink, work, unit, item.out)
            if item.sums is not None:
                self.observer.recorder.record_sums(planned.name, planned.shape, item.sums)
            self.observer.progress(work, unit.start, unit.stop)
            return
        try:
            merged = _compute(self.spec, work, block, item.stack, self.observer, planned, item.job.result)
            out = _checked_output(merged, planned, item.stack, self.observer)
            self.bytes_written += _write(self.sink, work, unit, out)
            del out
            self.observer.observe(work, block, item.stack, merged, item.has_base, self.model_refs)
        finally:
            self.held.give(item.stack)


def _write(sink: Sink, work: _Work, unit: ReadUnit, out: torch.Tensor) -> int:
    """Write stage: a whole tensor, or a block's rows (a sink without row writes gets the tensor once it
    is complete). Returns the bytes written."""
    planned = work.planned
    write_rows = getattr(sink, "write_rows", None)
    if len(work.blocks) == 1:
        sink.write(planned.name, out)
    elif write_rows is not None:
        write_rows(planned.name, unit.start, out)
    else:
        if work.assembled is None:
            work.assembled = torch.empty(planned.shape, dtype=planned.dtype, device=out.device)
        work.assembled[unit.start : unit.stop] = out
        if unit.stop == planned.rows:
            sink.write(planned.name, work.assembled)
            work.assembled = None
    return out.numel() * out.element_size()


def _merge_stored(
    work: _Work,
    unit: ReadUnit,
    stack: torch.Tensor,
    observer: _Observer,
    model_refs: tuple[str, ...],
    record: bool = True,
) -> tuple[torch.Tensor, TensorSums | None] | None:
    """Compute a unit of stored rows in one native pass (merging/stored.py): (its output in the tensor's
    dtype, its whole tensor's geometry sums or None), the sums recorded already with `record` (a block's
    always are); None, with nothing recorded, when a value is NaN or Inf."""
    planned = work.planned
    geometry = observer.wants_geometry(planned, model_refs)
    whole = len(work.blocks) == 1
    if geometry and not whole and work.geometry is None:
        work.geometry = BlockGeometry(observer.recorder.n)
    sums = work.geometry.draft() if geometry and not whole else TensorSums(observer.recorder.n)
    out, finite = merge_stored(stack, work.stored, sums, planned.dtype)
    if not finite:
        return None
    if geometry and whole:
        if not record:
            return out, sums
        observer.recorder.record_sums(planned.name, planned.shape, sums)
    elif geometry:
        work.geometry.accept(sums)
        if unit.stop >= planned.rows:
            work.geometry.finish(observer.recorder, planned.name, planned.shape)
            work.geometry = None
    return out, None


def _block_inputs(
    planned: PlannedTensor,
    stack: torch.Tensor,
    has_base: bool,
    seed: int,
    dev: torch.device,
    read_as_task_vectors: bool = False,
) -> TensorInputs:
    """The method's view of a read unit: task vectors formed once (by the reader, or here in place;
    methods and geometry share them); without a base (linear) the checkpoints' weights."""
    stacked, base_t = stack[:-1], stack[-1]
    gen = torch.Generator(device=dev).manual_seed(tensor_seed(seed, planned.name))
    params, mparams = planned.params, planned.model_params
    if has_base:
        if not read_as_task_vectors:
            stacked.sub_(base_t)
        models = ModelsFromTaskVectors(base_t, stacked)
        return TensorInputs(planned.name, base_t, models, mparams, params, gen, stacked)
    return TensorInputs(planned.name, None, list(stacked.unbind(0)), mparams, params, gen)


def _compute(
    spec: MethodSpec,
    work: _Work,
    block: Block,
    stack: torch.Tensor,
    observer: _Observer,
    planned: PlannedTensor,
    result: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Compute stage: the method on one block (a NaN/Inf output is refused by `_checked_output`); `result`:
    the block's merge, computed elsewhere (a tensor lane), to be checked here."""
    inputs = block.inputs
    base_t = stack[-1]
    try:
        if result is not None:
            merged = result()
        else:
            merged = work.merger.merge(block) if work.merger is not None else spec.merge(inputs)
    except (RuntimeError, ValueError):
        observer.recorder.refuse_nonfinite_inputs(planned.name, base_t, stack[:-1])  # names a NaN input
        raise
    merged = _check_shape(
        merged,
        planned,
        spec.name,
        tuple(block.inputs.base.shape) if block.inputs.base is not None else tuple(stack.shape[1:]),
    )
    if merged.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr():
        merged = merged.clone()  # the stats reuse the inputs' memory in place
    return merged


def _checked_output(
    merged: torch.Tensor, planned: PlannedTensor, stack: torch.Tensor, observer: _Observer
) -> torch.Tensor:
    """The merged block in the output dtype, refused before the sink sees it when it holds NaN/Inf (issue
    11): bfloat16 on CPU in one native pass that also checks (merging/native/convert.py), else a check and a
    cast."""
    narrowed = convert.narrow_bf16(merged) if planned.dtype == torch.bfloat16 else None
    finite = narrowed[1] if narrowed is not None else output_is_finite(merged)
    if not finite:
        observer.recorder.refuse_nonfinite_inputs(planned.name, stack[-1], stack[:-1])
        raise NonFiniteError(
            f"the method produced NaN/Inf in tensor {planned.name!r}; check its parameters "
            "(e.g. weights summing to 0)"
        )
    return narrowed[0] if narrowed is not None else merged.to(planned.dtype)


class _Observer:
    """Observe stage: geometry (whole tensors, or accumulated over blocks), progress and cancellation."""

    def __init__(
        self,
        recorder: GeometryRecorder,
        plan: MergePlan,
        tensor_bytes: Mapping[str, int],
        on_progress: Callable[[Progress], None] | None,
        should_cancel: Callable[[], bool] | None,
    ):
        self.recorder, self.plan, self.tensor_bytes = recorder, plan, tensor_bytes
        self.bytes_total, self.bytes_read, self.done = sum(tensor_bytes.values()), 0, 0
        self.on_progress, self.should_cancel = on_progress, should_cancel

    def check_cancel(self, where: str) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise MergeCancelled(f"merge cancelled {where}")

    def observe(
        self,
        work: _Work,
        block: Block,
        stack: torch.Tensor,
        merged: torch.Tensor,
        has_base: bool,
        model_refs: tuple[str, ...],
    ) -> None:
        """Record geometry (consuming the unit's stack in place), then report progress."""
        planned = work.planned
        geometry = self.wants_geometry(planned, model_refs)
        last = block.stop >= planned.rows
        if len(work.blocks) == 1:
            if geometry:  # summed in column steps inside: small temporaries however large the tensor
                self.recorder.record_stack(planned.name, stack, merged, task_vectors=has_base)
        elif geometry:
            if work.geometry is None:
                work.geometry = BlockGeometry(self.recorder.n)
            work.geometry.add(stack, merged, task_vectors=has_base)
            if last:
                work.geometry.finish(self.recorder, planned.name, planned.shape)
                work.geometry = None
        self.progress(work, block.start, block.stop)

    @staticmethod
    def wants_geometry(planned: PlannedTensor, model_refs: tuple[str, ...]) -> bool:
        """Geometry compares the recipe's models: a tensor merged from other inputs is not recorded."""
        return tuple(i.checkpoint for i in planned.inputs) == model_refs

    def progress(self, work: _Work, start: int, stop: int) -> None:
        """Rows [start, stop) of a tensor are done: count their bytes, report."""
        planned = work.planned
        last = stop >= planned.rows
        nbytes = self.tensor_bytes[planned.name]
        self.bytes_read += nbytes * stop // planned.rows - nbytes * start // planned.rows
        if last:
            self.done += 1
        if self.on_progress is not None:
            self.on_progress(
                Progress(self.done, len(self.plan.tensors), self.bytes_read, self.bytes_total, planned.name)
            )


def output_is_finite(merged: torch.Tensor) -> bool:
    """No NaN/Inf in a merged tensor: one float32 sum pass (NaN and Inf propagate through it), a full scan
    only when the sum is not finite (so a finite tensor whose sum overflows still passes). The float64 sum
    this replaces cost as much as the merge of task arithmetic itself."""
    return math.isfinite(float(merged.sum())) or bool(torch.isfinite(merged).all())


def input_bytes(planned: PlannedTensor, base: Checkpoint | None, by_ref: Mapping[str, Checkpoint]) -> int:
    """Bytes read from disk for one output tensor: the base's tensor and every input's stored tensor."""
    n = base.tensors[planned.base.name].nbytes if base is not None and planned.base is not None else 0
    return n + sum(by_ref[i.checkpoint].tensors[i.source.name].nbytes for i in planned.inputs)


def _row_numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) >= 2 else math.prod(shape)


def _check_shape(
    merged: torch.Tensor, planned: PlannedTensor, method: str, expected: tuple[int, ...]
) -> torch.Tensor:
    if tuple(merged.shape) != expected:
        raise RuntimeError(
            f"method {method} returned shape {tuple(merged.shape)} for {planned.name!r}, expected {expected}"
        )
    return merged.float()


def _check_spectra(spectra: str | Sequence[str] | None, ndims: Mapping[str, int]) -> None:
    """Every requested name or pattern must pick at least one matrix, so typos fail before the merge."""
    if not spectra or spectra == "all":
        return
    for pat in spectra:
        if not any(wants_spectrum(n, nd, [pat]) for n, nd in ndims.items()):
            raise RecipeError(f"spectra: no 2-D tensor matches {pat!r}")
