"""Merging one tensor in row blocks (issue 10): the seam between a method and the engine's memory budget.

A tensor whose inputs do not fit the budget is handed to its method a few rows at a time. A method says how:
- `MethodSpec.blockwise` (or `blockwise_when` for its parameters) True: its merge function treats every row
  on its own (elementwise or per-row), so calling it on a block of rows gives those rows of the result;
- `MethodSpec.block_merger`, a `BlockFactory`: per tensor it returns a `BlockMerger` that first sees every
  block in `passes` statistic passes (exact whole-tensor statistics: top-k thresholds, L1 norms, cosines),
  then merges block by block; or None where the tensor must be merged whole (an SVD needs the matrix);
- neither: the tensor is always merged whole.

The whole-tensor path of a factory method runs the same merger on one block holding every row, so blocked
and unblocked results agree bit for bit. Randomness is a function of the seed and each entry's position
(`uniform_at`), never of how the tensor was cut.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from merging.methods.base import TensorInputs
from merging.native import rank_cut as native_rank

M32 = 0xFFFF_FFFF
_CHUNK = 1 << 20  # entries hashed at a time: bounds the int64 temporaries of uniform_at


@dataclass(frozen=True)
class TensorContext:
    """What a block merger knows of its tensor before any block: name, full shape, parameters, the number
    of checkpoints, the per-tensor seed and how many blocks the engine cut it into."""

    name: str
    shape: tuple[int, ...]
    params: Mapping[str, Any]
    model_params: Sequence[Mapping[str, Any]]
    n_models: int
    seed: int
    n_blocks: int = 1

    @property
    def rows(self) -> int:
        return tensor_rows(self.shape)

    @property
    def row_numel(self) -> int:
        return row_numel(self.shape)


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of one tensor: `inputs` holds exactly those rows (task vectors, base, params)."""

    start: int
    stop: int
    inputs: TensorInputs
    row_numel: int

    @property
    def offset(self) -> int:
        """Flat index of the block's first entry in the whole tensor."""
        return self.start * self.row_numel


class BlockMerger(Protocol):
    passes: int

    def observe(self, pass_no: int, block: Block) -> None:
        """Accumulate whole-tensor statistics; called for every block, in order, once per pass."""

    def merge(self, block: Block) -> torch.Tensor:
        """The merged weights of the block's rows (called in order, after all passes)."""


BlockFactory = Callable[[TensorContext], "BlockMerger | None"]


def tensor_rows(shape: Sequence[int]) -> int:
    """Rows a tensor can be cut into: its first axis; a vector or scalar is one row."""
    return int(shape[0]) if len(shape) >= 2 else 1


def row_numel(shape: Sequence[int]) -> int:
    return math.prod(shape[1:]) if len(shape) >= 2 else math.prod(shape)


def seed_of(inputs: TensorInputs) -> int:
    """The per-tensor seed the engine gave this tensor's generator (0 without one)."""
    return int(inputs.generator.initial_seed()) if inputs.generator is not None else 0


def context_of(inputs: TensorInputs, n_blocks: int = 1) -> TensorContext:
    base = inputs.base if inputs.base is not None else inputs.models[0]
    return TensorContext(
        inputs.name,
        tuple(base.shape),
        inputs.params,
        inputs.model_params,
        len(inputs.models),
        seed_of(inputs),
        n_blocks,
    )


def merge_whole(factory: BlockFactory, fallback: Callable[[TensorInputs], torch.Tensor] | None = None):
    """A whole-tensor merge function from a block factory: one block holding every row, same code path."""

    def merge(inputs: TensorInputs) -> torch.Tensor:
        ctx = context_of(inputs)
        merger = factory(ctx)
        if merger is None:
            if fallback is None:
                raise RuntimeError(f"no whole-tensor merge for {inputs.name!r}")
            return fallback(inputs)
        block = Block(0, ctx.rows, inputs, ctx.row_numel)
        for p in range(merger.passes):
            merger.observe(p, block)
        return merger.merge(block)

    return merge


# ---- position-keyed randomness ---------------------------------------------------------------------


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values < 2^32 (a bijection, well mixed)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def stream_key(seed: int, stream: int) -> int:
    """A 32-bit key per (tensor seed, stream), e.g. one stream per checkpoint."""
    k = torch.tensor([(seed ^ (seed >> 32)) & M32, (stream * 0x9E3779B1 + 0x7F4A7C15) & M32])
    k = _fmix32(k)
    return int(_fmix32((k[0] ^ k[1]).view(1)).item())


def uniform_at(key: int, offset: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """float32 uniforms in [0, 1) for the entries at flat positions offset, offset+1, ...: a hash of (key,
    position), so any cut of a tensor into blocks draws the same number for the same entry, on any device.

    Hashed in int32 lanes, in place, a cache-sized piece at a time (5x faster than int64 temporaries:
    DARE's keeps over 8B embeddings were the merge's slowest part); the bits are those of `_uniform_at_64`,
    which still hashes pieces that reach past 2^32 positions."""
    n = math.prod(shape)
    out = torch.empty(n, dtype=torch.float32, device=device)
    step = min(n, _PIECE)
    h = torch.empty(step, dtype=torch.int32, device=device)
    tmp = torch.empty_like(h)
    ramp = torch.arange(step, dtype=torch.int32, device=device)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        a = lo // _CHUNK * _CHUNK  # the int64 path's chunk, which decides how positions past 2^32 mix
        b = min(n, a + _CHUNK)
        if offset + b > M32:
            out[lo:hi] = _uniform_at_64(key, offset + a, (b - a,), device)[lo - a : hi - a]
            continue
        hh, tt = h[: hi - lo], tmp[: hi - lo]
        torch.add(ramp[: hi - lo], _signed32(offset + lo), out=hh)  # positions, wrapping like & M32
        hh.bitwise_xor_(_signed32(key))
        for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):  # _fmix32, logical shifts
            torch.bitwise_right_shift(hh, shift, out=tt)
            hh.bitwise_xor_(tt.bitwise_and_((1 << (32 - shift)) - 1))
            if mul is not None:
                hh.mul_(_signed32(mul))  # int32 products wrap: the low 32 bits of the int64 product
        hh.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF)
        out[lo:hi].copy_(hh).mul_(1.0 / (1 << 24))
    return out.view(*shape)


_PIECE = 1 << 16  # int32 entries hashed at a time by uniform_at: two 256 KiB buffers stay in cache


def _signed32(x: int) -> int:
    """The int32 whose bits are x mod 2^32."""
    x &= M32
    return x - (1 << 32) if x >= 1 << 31 else x


def _uniform_at_64(key: int, offset: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """uniform_at in int64 temporaries, chunk by chunk (the definition; also positions past 2^32)."""
    n = math.prod(shape)
    out = torch.empty(n, dtype=torch.float32, device=device)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        pos = torch.arange(offset + lo, offset + hi, dtype=torch.int64, device=device)
        h = _fmix32((pos & M32) ^ key)
        if offset + hi > M32:
            h = _fmix32(h ^ (pos >> 32) ^ (key * 0x27D4EB2F & M32))
        out[lo:hi] = (h >> 8).to(torch.float32).mul_(1.0 / (1 << 24))
    return out.view(*shape)


# ---- exact order statistics over blocks ------------------------------------------------------------


def magnitude_bits(t: torch.Tensor) -> torch.Tensor:
    """|t| as int32 bit patterns: for non-negative float32 the integer order is the value order."""
    return t.abs().view(-1).view(torch.int32)


class RankCut:
    """The j smallest |entries| of a tensor seen block by block (ties: lower flat position counts as
    smaller), found exactly in two counting passes (radix select on the float32 bit patterns).

    pass 0: histogram of the high 16 bits; pass 1: histogram of the low 16 bits inside the bucket holding
    rank j. Then `mask(block_bits)` marks the block's entries among the j smallest, blocks in order."""

    def __init__(self, j: int, n: int):
        self.j, self.n = j, n
        # histograms (a pair from a pool, taken on first use, given back once the cut is found)
        self._pair = self._hi = self._lo = torch.zeros(0, dtype=torch.int64)
        self.bucket = -1
        self.below = 0  # entries strictly below `bucket` (pass 0), then strictly below `value`
        self.value = -1  # threshold bit pattern
        self.ties = 0  # entries equal to `value` that are among the j smallest (lowest positions first)
        self._seen = 0

    @property
    def trivial(self) -> bool:
        return self.j <= 0 or self.j >= self.n

    def observe(self, pass_no: int, bits: torch.Tensor) -> None:
        """Count a block's entries: `bits` are int32 bit patterns of |x| (magnitude_bits) or of x itself."""
        if self.trivial:
            return
        if not self._hi.numel():
            self._pair = _take_histograms()
            self._hi, self._lo = self._pair[0], self._pair[1]
        if pass_no != 0 and self.bucket < 0:
            self._find_bucket()
        if native_rank.count(bits, pass_no, self.bucket, self._hi if pass_no == 0 else self._lo):
            return  # one native pass over the block (merging/native/rank_cut.c), the same counts
        keys = bits >> 16  # int32 keys (bincount takes them without an int64 copy); sign bit dropped:
        keys &= 0x7FFF  # `bits` may be a float32 tensor's raw bits, |x| and x share the other 31
        if pass_no == 0:
            _count_into(self._hi, keys)
        else:
            sel = bits[keys == self.bucket]
            if sel.numel():
                _count_into(self._lo, sel & 0xFFFF)

    def _find_bucket(self) -> None:
        cum = torch.cumsum(self._hi, 0)
        self.bucket = int(torch.searchsorted(cum, self.j, right=False))  # first bucket with cum >= j
        self.below = int(cum[self.bucket - 1]) if self.bucket > 0 else 0

    def finish(self) -> None:
        if self.trivial or self.value >= 0:
            return
        if self.bucket < 0:
            self._find_bucket()
        need = self.j - self.below
        cum = torch.cumsum(self._lo, 0)
        low = int(torch.searchsorted(cum, need, right=False))
        before = int(cum[low - 1]) if low > 0 else 0
        self.value = (self.bucket << 16) | low
        self.ties = need - before
        self._seen = 0
        _give_back_histograms(self._pair)
        self._hi = self._lo = self._pair = torch.zeros(0, dtype=torch.int64)

    def restart(self) -> None:
        """Start a new in-order sweep over the blocks (each sweep assigns ties from the first block on)."""
        self._seen = 0

    def state(self) -> tuple[int, int]:
        """(value, left) for this block: the entries in the cut are those whose |x| bits are below `value`,
        and of those equal to it the first `left` (the j ≤ 0 and j ≥ n cuts included)."""
        if self.j <= 0:
            return 0, 0
        if self.j >= self.n:
            return 0xFFFFFFFF, 0
        self.finish()
        return self.value, self.ties - self._seen

    def placed(self, left: int, equal: int) -> None:
        """Account a block masked elsewhere (`drop_ranked_`): `equal` entries equal to the value were seen."""
        if left > 0:  # as `mask` counts them
            self._seen += equal

    def mask(self, bits: torch.Tensor) -> torch.Tensor:
        """Bool mask (flat, like `bits`) of this block's entries among the j smallest of the tensor."""
        if self.j <= 0:
            return torch.zeros_like(bits, dtype=torch.bool)
        if self.j >= self.n:
            return torch.ones_like(bits, dtype=torch.bool)
        self.finish()
        mask = bits < self.value
        left = self.ties - self._seen
        if left > 0:  # once every tie is placed, later blocks need no search for them (a full scan each)
            tied = torch.nonzero(bits == self.value).view(-1)
            mask[tied[:left]] = True
            self._seen += tied.numel()
        return mask


# Zeroed histogram pairs that finished cuts gave back, for the next tensor's cuts: a fresh 1 MiB pair per cut
# cost ~5 ms in a merge (new pages each time), more than counting a 2816 x 1024 block natively. A tensor holds
# one pair per cut (two per checkpoint at most), so a few dozen cover any merge.
_HISTOGRAMS: list[torch.Tensor] = []
_HISTOGRAMS_KEPT = 32


def _take_histograms() -> torch.Tensor:
    try:
        pair = _HISTOGRAMS.pop()  # atomic: cuts on two threads never share a pair
    except IndexError:
        pair = torch.empty(2, 1 << 16, dtype=torch.int64)
        ctypes.memset(pair.data_ptr(), 0, pair.numel() * pair.element_size())
    return pair


def _give_back_histograms(pair: torch.Tensor) -> None:
    if pair.shape != (2, 1 << 16) or len(_HISTOGRAMS) >= _HISTOGRAMS_KEPT:
        return
    ctypes.memset(pair.data_ptr(), 0, pair.numel() * pair.element_size())  # zero_() on two threads waited
    _HISTOGRAMS.append(pair)  # at a barrier for a busy core: ~5 ms per pair under load, measured


def drop_ranked_(t: torch.Tensor, cuts: Sequence[RankCut]) -> bool:
    """Zero in place the entries of `t` that `cuts` drop, in one native pass: with one cut those among its j
    smallest |x| (TIES), with two those among the first's or not among the second's (Breadcrumbs). The same
    zeros as masking with `RankCut.mask` of `magnitude_bits(t)`; False when the torch path must do it."""
    if not t.is_contiguous():
        return False
    states = [cut.state() for cut in cuts]
    equal = native_rank.drop_(t.view(-1), [v for v, _ in states], [left for _, left in states])
    if equal is None:
        return False
    for cut, (_, left), seen in zip(cuts, states, equal, strict=True):
        cut.placed(left, seen)
    return True


def _count_into(hist: torch.Tensor, keys: torch.Tensor) -> None:
    """hist[k] += number of k in keys (keys < len(hist)): bincount for large inputs, a scatter-add for
    small ones (a 65536-bin bincount per small block would cost more than the block)."""
    if keys.numel() >= hist.numel():
        hist += torch.bincount(keys, minlength=hist.numel()).cpu()
    else:
        hist.index_add_(0, keys.cpu(), torch.ones(keys.numel(), dtype=hist.dtype))


def row_sums_abs(t: torch.Tensor) -> torch.Tensor:
    """float64 Σ|x| of each row of a (rows, ...) block: the unit whole-tensor L1 norms are built from, so
    they do not depend on how rows were grouped into blocks."""
    rows = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    return rows.abs().sum(dim=1, dtype=torch.float64).cpu()


def exact_sum(parts: Sequence[torch.Tensor]) -> float:
    """Correctly rounded sum of float64 pieces (math.fsum): independent of their order and grouping."""
    return math.fsum(x for p in parts for x in p.tolist())


class RowwiseMerger:
    """A merger for a function that treats rows independently: no passes, the function on each block."""

    passes = 0

    def __init__(self, fn: Callable[[TensorInputs], torch.Tensor]):
        self.fn = fn

    def observe(self, pass_no: int, block: Block) -> None:  # pragma: no cover - passes is 0
        pass

    def merge(self, block: Block) -> torch.Tensor:
        return self.fn(block.inputs)


def merger_for(spec: Any, ctx: TensorContext) -> BlockMerger | None:
    """How `spec` (a MethodSpec) merges this tensor in blocks: its factory's merger, a row-wise wrapper of
    its merge function when it is row-separable with these parameters, or None (whole tensor only)."""
    if spec.block_merger is not None:
        return spec.block_merger(ctx)
    if spec.is_blockwise(ctx.params):
        return RowwiseMerger(spec.merge)
    return None


def sub_block(inputs: TensorInputs, start: int, stop: int) -> TensorInputs:
    """Rows [start, stop) of a whole tensor's inputs, as views (no copy)."""
    from merging.methods.base import ModelsFromTaskVectors

    base = inputs.base[start:stop] if inputs.base is not None else None
    tv = inputs.task_vectors[:, start:stop] if inputs.task_vectors is not None else None
    if tv is not None and base is not None:
        models: Sequence[torch.Tensor] = ModelsFromTaskVectors(base, tv)
    else:
        models = [m[start:stop] for m in inputs.models]
    return TensorInputs(inputs.name, base, models, inputs.model_params, inputs.params, inputs.generator, tv)


def run_in_blocks(
    merger: BlockMerger,
    inputs: TensorInputs,
    rows_per_block: int,
    fn: Callable[[Block], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run a merger over an in-memory whole tensor cut into blocks of `rows_per_block` rows, assembling the
    result (`fn`, default `merger.merge`, per block): the method's temporaries then scale with a block, not
    the tensor. Same result as one block (the mergers are exact)."""
    ctx_shape = tuple((inputs.base if inputs.base is not None else inputs.models[0]).shape)
    rows, per_row = tensor_rows(ctx_shape), row_numel(ctx_shape)
    if len(ctx_shape) < 2:
        rows_per_block = rows
    step = max(1, rows_per_block)
    blocks = [
        Block(a, min(rows, a + step), sub_block(inputs, a, min(rows, a + step)), per_row)
        if len(ctx_shape) >= 2
        else Block(0, 1, inputs, per_row)
        for a in range(0, rows, step)
    ]
    for p in range(merger.passes):
        for b in blocks:
            merger.observe(p, b)
    fn = fn or merger.merge
    if len(blocks) == 1:
        return fn(blocks[0])
    out = torch.empty(
        ctx_shape,
        dtype=torch.float32,
        device=blocks[0].inputs.task_vectors.device
        if blocks[0].inputs.task_vectors is not None
        else inputs.models[0].device,
    )
    for b in blocks:
        out[b.start : b.stop] = fn(b)
    return out
