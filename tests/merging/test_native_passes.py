"""The native passes over memory (merging/native: convert.c, weighted_sum.c) give torch's bytes, and the
paths that use them (the reader forming task vectors, task arithmetic's sum, the engine's checked bfloat16
output) give the same merge with native code on and off."""

from __future__ import annotations

import shutil

import pytest
import torch

from merging import DirectorySink, run_merge
from merging.checkpoint import open_checkpoint
from merging.compat import TensorSource
from merging.methods.task_vectors import weighted_sum
from merging.native import build, convert
from merging.native import weighted_sum as weighted_sum_module
from merging.reader import RowReader
from tests.merging.helpers import recipe
from tests.merging.test_blocks import _checkpoint_dir

needs_cc = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler on this machine"
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _awkward(n: int, seed: int) -> torch.Tensor:
    """float32 values that test a conversion: signed zeros, subnormals, huge, tiny, ties in rounding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 10.0 ** torch.randint(-3, 4, (n,), generator=g)
    x[0::11] = 0.0
    x[1::11] = -0.0
    x[2::11] = torch.randn(len(x[2::11]), generator=g) * 1e-39  # float32 subnormals
    x[3::11] = 3.4e38  # past bfloat16's largest finite value once rounded
    high = torch.randint(0, 0x7F80, (len(x[4::11]),), generator=g, dtype=torch.int32)  # finite bfloat16s
    sign = torch.randint(0, 2, high.shape, generator=g).mul(2).sub(1).float()
    x[4::11] = (high * 2**16 + 2**15).view(torch.float32) * sign  # exactly halfway between two bfloat16s
    return x


@needs_cc
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n", [1, 17, 100_003])
def test_widen_gives_torchs_bytes_with_and_without_the_base_subtracted(dtype, n):
    stored = _awkward(n, 1).to(dtype)
    stored[n // 2] = float("nan")
    if n > 2:
        stored[1] = float("-inf")
    minus = _awkward(n, 2)
    out = torch.empty(n)
    assert convert.widen(stored, out)
    _assert_same_bits(out, stored.float())
    assert convert.widen(stored, out, minus)
    _assert_same_bits(out, stored.float() - minus)


def _assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit, except a NaN's payload (NaNs are refused, never merged)."""
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(_bits(got)[~want.isnan()], _bits(want)[~want.isnan()])


@needs_cc
@pytest.mark.parametrize("n", [5, 100_003, convert.SPLIT_ELEMS + 7])  # the last one is split over two lanes
def test_narrow_gives_torchs_bfloat16_bytes_and_the_finite_check(n):
    x = _awkward(n, 3)
    out, finite = convert.narrow_bf16(x)
    assert finite and torch.equal(_bits(out), _bits(x.to(torch.bfloat16)))
    assert (out == float("inf")).any() or n < 4  # 3e38 rounds up past bfloat16's largest: as torch does
    for where in (0, n // 2 - 1, n - 1):  # either half of a split narrowing
        for bad in (float("nan"), float("inf"), float("-inf")):
            y = x.clone()
            y[where] = bad
            out, finite = convert.narrow_bf16(y)
            assert not finite
            keep = torch.ones(n, dtype=torch.bool)
            keep[where] = False
            assert torch.equal(_bits(out)[keep], _bits(y.to(torch.bfloat16))[keep])


def test_layouts_the_kernels_do_not_take_are_left_to_torch(monkeypatch):
    x = torch.randn(8, 6)
    out = torch.empty(8, 3)
    assert not convert.widen(x.to(torch.bfloat16)[:, ::2], out)  # a strided source
    assert not convert.widen(torch.arange(18, dtype=torch.int32), out)  # not a float dtype
    assert not convert.widen(x.to(torch.bfloat16), torch.empty(47))  # another size
    assert convert.narrow_bf16(x[:, ::2]) is None and convert.narrow_bf16(x.double()) is None
    monkeypatch.setenv(build.SWITCH_ENV, "0")
    assert not convert.widen(x.to(torch.bfloat16), torch.empty(8, 6))
    assert convert.narrow_bf16(x) is None


@needs_cc
@pytest.mark.parametrize("tasks", [1, 2, 12])
@pytest.mark.parametrize("n", [3, 4099, weighted_sum_module.SPLIT_ELEMS + 5])
def test_weighted_sum_gives_the_same_bytes_natively_and_from_torchs_ops(monkeypatch, tasks, n):
    g = torch.Generator().manual_seed(tasks)
    rows = torch.randn(tasks, n, generator=g) * torch.logspace(-3, 3, tasks)[:, None]
    rows[:, 0] = -0.0
    weights = [0.1 * (i + 1) - 0.37 for i in range(tasks)]  # not representable in float32
    plus = _awkward(n, 6)
    for p in (None, plus):
        monkeypatch.setenv(build.SWITCH_ENV, "1")
        native = weighted_sum(rows, weights, p)
        assert weighted_sum_module.weighted_sum(rows, weights, p) is not None  # the kernel did run
        monkeypatch.setenv(build.SWITCH_ENV, "0")
        _assert_same_bits(native, weighted_sum(rows, weights, p))


@pytest.mark.parametrize("native", ["1", "0"])
def test_reader_reads_task_vectors_as_rows_less_the_base(tmp_path, monkeypatch, native):
    """Rows past the stored ones (a fitted vocabulary) are zero less the base, like the engine's own sub_."""
    monkeypatch.setenv(build.SWITCH_ENV, native)
    emb = _awkward(60, 4).view(10, 6).to(torch.bfloat16)
    ck = open_checkpoint(str(_checkpoint_dir(tmp_path, {"e": emb, "v": emb[0].to(torch.float16)})))
    base = _awkward(30, 5).view(5, 6)
    reader = RowReader()
    out = torch.empty(5, 6)
    reader.read_rows(ck, TensorSource("e", rows=12), 7, 12, out, minus=base)
    want = torch.zeros(5, 6)
    want[:3] = emb[7:10].float()
    assert torch.equal(_bits(out), _bits(want - base))
    vec = torch.empty(6)
    reader.read_rows(ck, TensorSource("v"), 0, 1, vec, minus=base[0])
    assert torch.equal(_bits(vec), _bits(emb[0].to(torch.float16).float() - base[0]))
    reader.close()


PER_MODEL = {"ties": {"density": 0.5}, "della": {"density": 0.5, "epsilon": 0.1}}


@needs_cc
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "linear", "task_arithmetic_mean", "della"])
def test_a_merge_has_the_same_bytes_with_native_code_on_and_off(
    tmp_path, tiny_llama_family, monkeypatch, method
):
    base, cks = tiny_llama_family
    per_model = {"weight": 0.6, **PER_MODEL.get(method, {})}
    params = {"normalize": True} if method == "task_arithmetic_mean" else {}
    method = method.removesuffix("_mean")
    r = recipe(
        method,
        None if method == "linear" else base,
        cks,
        per_model,
        parameters=params,
        out_dtype="bfloat16",
        seed=3,  # DELLA's draws: the same on both runs
    )
    files = {}
    for native in ("1", "0"):
        monkeypatch.setenv(build.SWITCH_ENV, native)
        out = run_merge(r, DirectorySink(tmp_path / native), device="cpu").output_path
        files[native] = (out / "model.safetensors").read_bytes()
    assert files["1"] == files["0"]


def test_a_unit_read_in_two_halves_equals_one_read_whole(tmp_path, monkeypatch):
    """The prefetcher reads a large unit's rows in two halves at once (its own reader each); the stack is
    the one a single read gives, task vectors included."""
    from merging import reader as reader_module
    from merging.reader import Prefetcher, ReadUnit

    g = torch.Generator().manual_seed(7)
    ws = [torch.randn(9, 5, generator=g).to(torch.bfloat16) for _ in range(3)]
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    cks = [open_checkpoint(str(_checkpoint_dir(d, {"w": w}))) for d, w in zip(dirs, ws, strict=True)]
    src = TensorSource("w")
    units = [
        ReadUnit(0, "w", 0, 9, (9, 5), (cks[0], src), ((cks[1], src), (cks[2], src)), task_vectors=tv)
        for tv in (True, False)
    ]
    stacks = {}
    for split in (1, 1 << 40):  # every unit split, none split
        monkeypatch.setattr(reader_module, "SPLIT_ELEMS", split)
        pre = Prefetcher(units, torch.device("cpu"))
        stacks[split] = [stack.clone() for _, stack in pre]
        assert (pre._helper is not None) == (split == 1)
        pre.close()
    for got, want in zip(stacks[1], stacks[1 << 40], strict=True):
        assert torch.equal(got, want)
    base, a, b = (w.float() for w in ws)
    assert torch.equal(stacks[1][0], torch.stack([a - base, b - base, base]))
    assert torch.equal(stacks[1][1], torch.stack([a, b, base]))


def _ranked_blocks(native: str, monkeypatch, x: torch.Tensor, js: list[int], blocks: list[int]):
    """Count x block by block into RankCuts at ranks `js`, then drop what they drop, block by block."""
    from merging.methods.blocks import RankCut, drop_ranked_, magnitude_bits

    monkeypatch.setenv(build.SWITCH_ENV, native)
    cuts = [RankCut(j, x.numel()) for j in js]
    edges = list(zip([0, *blocks], [*blocks, x.numel()], strict=True))
    for pass_no in (0, 1):
        for a, b in edges[::-1] if pass_no == 0 else edges:  # the engine may read a count pass backwards
            for cut in cuts:
                cut.observe(pass_no, x[a:b].view(torch.int32))
    out = x.clone()
    for a, b in edges:
        part = out[a:b]
        if native == "1":
            assert drop_ranked_(part, cuts)
        else:
            bits = magnitude_bits(part)
            drop = cuts[0].mask(bits)
            if len(cuts) == 2:
                drop |= ~cuts[1].mask(bits)
            part.masked_fill_(drop, 0)
    return out


@needs_cc
@pytest.mark.parametrize("js", [[0], [1], [37], [500], [999], [1000], [200, 700], [0, 1000], [450, 451]])
def test_ranked_drops_give_the_torch_paths_zeros_with_ties_across_blocks(monkeypatch, js):
    """Magnitudes drawn from a few values (so the cut's value is tied many times, across block edges),
    both signs, signed zeros and a NaN: the native counts and drops equal the torch path's, in place."""
    g = torch.Generator().manual_seed(sum(js) + len(js))
    x = torch.randint(-4, 5, (1000,), generator=g).float() * 0.25
    x[::97] = -0.0
    x[500] = float("nan")
    blocks = [130, 131, 400, 999]
    native = _ranked_blocks("1", monkeypatch, x, js, blocks)
    want = _ranked_blocks("0", monkeypatch, x, js, blocks)
    _assert_same_bits(native, want)


@needs_cc
@pytest.mark.parametrize(("rows", "cols"), [(3, 2), (5, 17), (7, 3000), (1100, 1024)])  # the last in halves
@pytest.mark.parametrize(("density", "epsilon"), [(0.5, 0.1), (0.3, 0.25)])
def test_della_probabilities_give_the_torch_paths_bytes(monkeypatch, rows, cols, density, epsilon):
    """Ranks by |x| with ties by position (zeros, signed zeros, repeated values), NaNs last in position
    order whatever their payload, ±Inf beside them."""
    from merging.methods.sparsify import della_keep_probabilities

    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols))
    x[:, ::5] = 0.0
    x[:, 1::7] = -0.0
    x[:, 2::9] = 1.5
    x[:, 3::9] = -1.5
    if cols > 16:
        x[0, 4], x[0, 10], x[0, 12] = float("nan"), float("inf"), -float("inf")
        x[0, 14] = torch.tensor(0x7FC00001, dtype=torch.int32).view(torch.float32)  # another NaN payload
        x[0, 15] = float("-nan")
    got = {}
    for native in ("1", "0"):
        monkeypatch.setenv(build.SWITCH_ENV, native)
        got[native] = della_keep_probabilities(x, density, epsilon)
    assert torch.equal(_bits(got["1"]), _bits(got["0"]))
