"""Reading the merge's inputs (issue 10): row ranges of stored tensors, with `preadv`, ahead of the merge.

Why not memory-map: the pages of a mapped file count in the merging process's RSS for as long as they stay
mapped, so a merge of twelve 16 GB checkpoints "uses" their whole size however little it holds. `preadv`
reads the rows a block needs into one reused staging buffer and converts them to float32 in the block's
slot; the page cache still helps a rerun, but nothing counts against the process.

`Prefetcher` runs the reads on a thread, one unit ahead: while the engine merges block k, the thread fills
block k + 1's stack (T checkpoints and the base, float32) in the other of two reused buffers. A unit the
plan marks `prefetch=False` (a large tensor merged whole) waits until the engine is done with the previous
one and gets a buffer of its own, so two of them never coexist. A unit merged on a tensor lane (`held`)
is read into a buffer of `HeldStacks`, which the engine gives back once that tensor is written.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.checkpoint import ST_DTYPES, Checkpoint, parse_dtype
from merging.compat import TensorSource, fit_source
from merging.errors import CheckpointError
from merging.native import convert
from merging.threads import claim_thread_count, torch_threads

STAGING_BYTES = 64 << 20  # largest single preadv; bigger reads are split
# A unit with at least this many rows and elements is read in two halves of its rows at once, the second
# on a helper thread with its own reader: reading (a kernel copy and a widening pass, both bound by memory)
# is the slower side of a cheap merge, and the engine's thread would otherwise wait on it with a core idle.
SPLIT_ROWS, SPLIT_ELEMS = 2, 1 << 20


class RowReader:
    """Reads rows [start, stop) of a checkpoint's stored tensor into a float32 destination."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._staging = torch.empty(0, dtype=torch.uint8)
        self.bytes_read = 0

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise CheckpointError(f"cannot open {path}: {exc.strerror or exc}") from None
            self._fds[path] = fd
        return fd

    @staticmethod
    def reads_whole(ck: Checkpoint, src: TensorSource) -> bool:
        """A pickled checkpoint (not ours to seek in) and a permuted vocabulary (never cut) are read whole,
        whatever rows are asked for."""
        info = ck.tensors.get(src.name)
        pickled = info is not None and (info.offset < 0 or getattr(ck, "_pickled", None) is not None)
        return pickled or src.row_map is not None

    def read_rows(
        self,
        ck: Checkpoint,
        src: TensorSource,
        start: int,
        stop: int,
        dest: torch.Tensor,
        minus: torch.Tensor | None = None,
    ) -> None:
        """Fill `dest` (float32, shape (stop − start, ...) or the tensor's shape for a vector) with rows
        [start, stop) of `src`, vocabulary rows fitted (rows past the stored ones are zero); with `minus`
        (float32, dest's shape) less those rows: a checkpoint's task vector, in the same pass where the
        native conversion applies (merging/native/convert.py), the same bytes either way."""
        info = ck.tensors.get(src.name)
        if info is None:
            raise CheckpointError(f"checkpoint {ck.ref!r} has no tensor {src.name!r}")
        matrix = len(info.shape) >= 2
        if self.reads_whole(ck, src):
            t = fit_source(ck.read(src.name), src)
            dest.copy_(t[start:stop] if matrix else t)
            if minus is not None:
                dest.sub_(minus)
            self.bytes_read += info.nbytes if not matrix or start == 0 else 0
            return
        dtype = parse_dtype(info.dtype)
        width = ST_DTYPES[_st_code(dtype)][1]
        row_shape = tuple(info.shape[1:]) if matrix else tuple(info.shape)
        stored_rows = info.shape[0] if matrix else 1
        rows_dest = dest if matrix else dest.view(1, *row_shape)
        rows_minus = None if minus is None else minus if matrix else minus.view(1, *row_shape)
        row_bytes = math.prod(row_shape) * width
        have = max(0, min(stop, stored_rows) - start)
        if have < stop - start:
            rows_dest[have:].zero_()
            if rows_minus is not None:
                rows_dest[have:].sub_(rows_minus[have:])
        rows_per_read = max(1, STAGING_BYTES // max(1, row_bytes))
        fd = self._fd(info.file)
        for a in range(0, have, rows_per_read):
            b = min(have, a + rows_per_read)
            nbytes = (b - a) * row_bytes
            if self._staging.numel() < nbytes:
                self._staging = torch.empty(0, dtype=torch.uint8)
                self._staging = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8)
            buf = self._staging[:nbytes]
            if nbytes:
                _pread_exact(fd, buf, info.offset + (start + a) * row_bytes, info.file)
            stored = buf.view(dtype).view(b - a, *row_shape)
            less = None if rows_minus is None else rows_minus[a:b]
            if not convert.widen(stored, rows_dest[a:b], less):
                rows_dest[a:b].copy_(stored)
                if less is not None:
                    rows_dest[a:b].sub_(less)
            self.bytes_read += nbytes

    def read_stored(
        self, ck: Checkpoint, src: TensorSource, start: int, stop: int, dest: torch.Tensor
    ) -> None:
        """Rows [start, stop) of `src` exactly as stored into `dest` (the stored dtype and rows, contiguous):
        one read straight into place, no staging and no conversion (the stored route, merging/stored.py)."""
        info = ck.tensors.get(src.name)
        if info is None:
            raise CheckpointError(f"checkpoint {ck.ref!r} has no tensor {src.name!r}")
        stored_rows = info.shape[0] if len(info.shape) >= 2 else 1
        row_bytes = info.nbytes // max(1, stored_rows)
        nbytes = (stop - start) * row_bytes
        if not dest.is_contiguous() or dest.numel() * dest.element_size() != nbytes:
            raise ValueError(f"read_stored: {src.name!r} rows {start}:{stop} need {nbytes} contiguous bytes")
        if nbytes:
            flat = dest.view(-1).view(torch.uint8)
            _pread_exact(self._fd(info.file), flat, info.offset + start * row_bytes, info.file)
        self.bytes_read += nbytes


def _st_code(dtype: torch.dtype) -> str:
    return next(code for code, (dt, _) in ST_DTYPES.items() if dt == dtype)


def _pread_exact(fd: int, buf: torch.Tensor, offset: int, path: Path) -> None:
    view = memoryview(buf.numpy()).cast("B")
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
        if n == 0:
            raise CheckpointError(f"truncated file {path}: ended at byte {offset + done}")
        done += n


@dataclass(frozen=True)
class ReadUnit:
    """One unit of input the engine merges at a time: rows [start, stop) of one output tensor, from the
    base (None without one) and from each input checkpoint (with its stored source)."""

    index: int  # position of the tensor in the plan
    name: str
    start: int
    stop: int
    shape: tuple[int, ...]  # the unit's shape (rows of the block, or the tensor's shape)
    base: tuple[Checkpoint, TensorSource] | None
    inputs: tuple[tuple[Checkpoint, TensorSource], ...]
    prefetch: bool = True
    # hand over task vectors: each checkpoint's rows less the base's (read first), in the reading pass
    task_vectors: bool = False
    # hand over the rows exactly as stored, in this dtype, for the stored route (merging/stored.py)
    stored: torch.dtype | None = None
    # the engine keeps this unit's stack past the next one (merged on a tensor lane): read into a buffer of
    # `HeldStacks`, which the engine gives back when it is done with it
    held: bool = False

    @property
    def slots(self) -> int:
        return len(self.inputs) + 1

    @property
    def numel(self) -> int:
        return self.slots * math.prod(self.shape)


class HeldStacks:
    """The input buffers of units the engine keeps past the next one (`ReadUnit.held`): `count` float32
    buffers of `numel` each, allocated on first use, taken by the reader and given back by the engine. The
    reader waits for a free one, so at most `count` such stacks exist at once."""

    def __init__(self, count: int, numel: int, device: torch.device):
        self.numel, self.device = numel, device
        self._buffers: list[torch.Tensor | None] = [None] * count
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(count):
            self._free.put(i)

    def take(self, unit: ReadUnit, stop: threading.Event) -> torch.Tensor | None:
        """A free buffer as the unit's (slots, *shape) stack; None once `stop` is set."""
        if unit.numel > self.numel or unit.stored:
            raise ValueError(f"HeldStacks: unit {unit.name!r} does not fit a held buffer")
        while not stop.is_set():
            try:
                i = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            if self._buffers[i] is None:
                self._buffers[i] = torch.empty(self.numel, dtype=torch.float32, device=self.device)
            return self._buffers[i][: unit.numel].view(unit.slots, *unit.shape)
        return None

    def give(self, stack: torch.Tensor) -> None:
        """Give back the buffer `stack` was read into."""
        ptr = stack.untyped_storage().data_ptr()
        for i, buf in enumerate(self._buffers):
            if buf is not None and buf.untyped_storage().data_ptr() == ptr:
                self._free.put(i)
                return
        raise ValueError("HeldStacks.give: not one of this pool's buffers")


class Prefetcher:
    """Reads units on a background thread, one ahead, into two reused float32 buffers on `device`.

    Iterate to get (unit, stack): stack is (T + 1, *unit.shape) with the checkpoints first (their task
    vectors where `unit.task_vectors`) and the base (or a copy of the first checkpoint when there is none)
    last; valid until the next iteration. A `unit.stored` stack holds the stored rows instead. A
    `unit.held` stack is read into a buffer of `held` and stays valid until the engine gives it back."""

    def __init__(
        self,
        units: Sequence[ReadUnit],
        device: torch.device,
        reader: RowReader | None = None,
        held: HeldStacks | None = None,
    ):
        self.units = list(units)
        self.device = device
        self.held = held
        self.reader = reader or RowReader()
        self._second_reader = RowReader()  # the helper thread's: a reader's staging buffer is its own
        self._helper: ThreadPoolExecutor | None = None  # started by the first unit read in two halves
        size = max((u.numel for u in self.units if u.prefetch and not u.held), default=0)
        self._pool = [torch.empty(0, dtype=torch.float32, device=device) for _ in range(2)]
        self._pool_size = size
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(2):
            self._free.put(i)
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mergelab-reader", daemon=True)
        self._started = False

    def _buffer(self, slot: int, unit: ReadUnit) -> torch.Tensor:
        dtype = unit.stored or torch.float32
        if not unit.prefetch:  # its own buffer, freed when the engine moves on
            return torch.empty((unit.slots, *unit.shape), dtype=dtype, device=self.device)
        if self._pool[slot].numel() < self._pool_size:
            self._pool[slot] = torch.empty(self._pool_size, dtype=torch.float32, device=self.device)
        pool = self._pool[slot]
        if dtype.itemsize < 4:  # stored bytes of a narrower dtype take part of the float32 slot
            pool = pool[: -(-unit.numel * dtype.itemsize // 4)].view(dtype)
        return pool[: unit.numel].view(unit.slots, *unit.shape)

    def _fill(self, unit: ReadUnit, stack: torch.Tensor) -> None:
        rows = unit.stop - unit.start
        sources = [*unit.inputs, *([unit.base] if unit.base is not None else [])]
        whole = any(RowReader.reads_whole(ck, src) for ck, src in sources)
        if whole or len(unit.shape) < 2 or rows < SPLIT_ROWS or unit.numel < SPLIT_ELEMS:
            self._fill_rows(self.reader, unit, stack, 0, rows)
        else:  # each half needs only its own rows of the base: the halves never wait on each other
            if self._helper is None:
                self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-reader-2")
            half = rows // 2
            second = self._helper.submit(self._fill_rows_on_one_thread, unit, stack, half, rows)
            try:
                self._fill_rows(self.reader, unit, stack, 0, half)
            finally:
                second.result()  # always awaited: the helper writes into `stack` until then
        if unit.base is None:
            stack[-1].copy_(stack[0])

    def _fill_rows_on_one_thread(self, unit: ReadUnit, stack: torch.Tensor, a: int, b: int) -> None:
        with torch_threads(1):
            self._fill_rows(self._second_reader, unit, stack, a, b)

    def _fill_rows(self, reader: RowReader, unit: ReadUnit, stack: torch.Tensor, a: int, b: int) -> None:
        """Rows [a, b) of the unit (all of a vector's) into every slot of `stack`, the base's first where
        the checkpoints are read less it."""
        part = stack[:, a:b] if len(unit.shape) >= 2 else stack
        if unit.stored:  # the checkpoints' rows and then the base's, as stored
            start, stop = (
                (unit.start + a, unit.start + b) if len(unit.shape) >= 2 else (unit.start, unit.stop)
            )
            for row, (ck, src) in zip(part, [*unit.inputs, unit.base], strict=True):
                reader.read_stored(ck, src, start, stop, row)
            return
        gpu = self.device.type != "cpu"
        minus = None
        if unit.base is not None and unit.task_vectors:
            self._read_into(reader, part[-1], unit.base, unit, a, b, gpu)
            minus = part[-1]
        for row, source in zip(part, unit.inputs, strict=False):
            self._read_into(reader, row, source, unit, a, b, gpu, minus)
        if unit.base is not None and not unit.task_vectors:
            self._read_into(reader, part[-1], unit.base, unit, a, b, gpu)

    @staticmethod
    def _read_into(
        reader: RowReader,
        dest: torch.Tensor,
        source: tuple[Checkpoint, TensorSource],
        unit: ReadUnit,
        a: int,
        b: int,
        gpu: bool,
        minus: torch.Tensor | None = None,
    ) -> None:
        ck, src = source
        start, stop = (unit.start + a, unit.start + b) if len(unit.shape) >= 2 else (unit.start, unit.stop)
        if not gpu:
            reader.read_rows(ck, src, start, stop, dest, minus)
            return
        host = torch.empty(dest.shape, dtype=torch.float32)
        reader.read_rows(ck, src, start, stop, host)
        dest.copy_(host)
        if minus is not None:
            dest.sub_(minus)

    def _run(self) -> None:
        # One torch thread for the conversions: they are memory-bound, and on two threads every copy waits at
        # a barrier for a core the engine's own thread is using.
        with torch_threads(1):
            self._read_all()

    def _read_all(self) -> None:
        try:
            for unit in self.units:
                if unit.held:  # a buffer of its own pool, given back by the engine
                    if self.held is None:
                        raise ValueError(f"unit {unit.name!r} is held but the reader has no HeldStacks")
                    stack = self.held.take(unit, self._stop)
                    if stack is None:
                        return
                    self._fill(unit, stack)
                    self._put(("unit", unit, stack, []))
                    continue
                if not unit.prefetch:  # wait until the engine has released both buffers
                    slots = [self._take_free() for _ in range(2)]
                    if self._stop.is_set():
                        return
                    self._pool = [torch.empty(0, dtype=torch.float32, device=self.device) for _ in range(2)]
                    stack = self._buffer(0, unit)
                    self._fill(unit, stack)
                    self._put(("unit", unit, stack, slots))
                    continue
                slot = self._take_free()
                if self._stop.is_set():
                    return
                stack = self._buffer(slot, unit)
                self._fill(unit, stack)
                self._put(("unit", unit, stack, [slot]))
            self._put(("end", None, None, []))
        except BaseException as exc:  # handed to the engine's thread, raised there
            self._put(("error", exc, None, []))

    def _take_free(self) -> int:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return -1

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[ReadUnit, torch.Tensor]]:
        if not self._started:
            claim_thread_count()  # this thread keeps its count whatever the reader sets for itself
            self._thread.start()
            self._started = True
        while True:
            kind, unit, stack, slots = self._ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise unit
            try:
                yield unit, stack
            finally:
                del stack
                for s in slots:
                    self._free.put(s)

    def close(self) -> None:
        """Stop the thread (it finishes the read in flight), release buffers and file descriptors."""
        self._stop.set()
        if self._started:
            self._thread.join()
        if self._helper is not None:
            self._helper.shutdown(wait=True)
            self._helper = None
        self.reader.close()
        self._second_reader.close()
        self._pool = []


def iterate_units(
    units: Sequence[ReadUnit],
    device: torch.device,
    on_close: Callable[[], None] | None = None,
    held: HeldStacks | None = None,
) -> Iterator[tuple[ReadUnit, torch.Tensor]]:
    """Prefetched (unit, stack) pairs; the thread and files are released however the loop ends."""
    pre = Prefetcher(units, device, held=held)
    try:
        yield from pre
    finally:
        pre.close()
        if on_close is not None:
            on_close()
