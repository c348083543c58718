"""The native geometry kernel (merging/native) gives the torch path's figures, and falls back to it cleanly.

Tolerance: counts are exact integers on both paths. The sums differ only in float32 summation order (the
torch path sums in float32 over a whole column step, the kernel in float32 over short lane runs, both in
float64 across), so norms and dots agree to 1e-5 of ‖τ_i‖‖τ_j‖ and the L1 masses to 1e-5 relative.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import merging.geometry as geometry
from merging import DirectorySink, ModelEntry, Recipe, run_merge
from merging.errors import NonFiniteError
from merging.geometry import GeometryRecorder, TensorSums
from merging.native import build
from merging.native import geometry_sums as native

ROOT = Path(__file__).resolve().parents[2]
HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")


def _sums(rows: torch.Tensor, monkeypatch, *, on: bool) -> TensorSums:
    monkeypatch.setenv(build.SWITCH_ENV, "1" if on else "0")
    sums = TensorSums(rows.shape[0] - 1)
    sums.add(rows)  # add() only reads the rows (views stay views: their stride is part of the test)
    return sums


def _assert_same_figures(a: TensorSums, b: TensorSums) -> None:
    assert (a.numel, a.conflicts, a.conflict_dropped, a.conflict_summed) == (
        b.numel,
        b.conflicts,
        b.conflict_dropped,
        b.conflict_summed,
    )
    ga, gb = a.gram, b.gram
    assert torch.equal(ga.isnan(), gb.isnan()) and torch.equal(ga.isinf(), gb.isinf())
    assert torch.equal(ga[ga.isinf()], gb[gb.isinf()])  # the same signs
    finite = torch.isfinite(ga)
    d = ga.diagonal().clamp_min(0).sqrt()
    scale = (d[:, None] * d[None, :]).where(finite, torch.zeros(()))
    assert bool(((ga - gb).where(finite, torch.zeros(())).abs() <= 1e-5 * scale + 1e-30).all())
    for x, y in ((a.task_l1, b.task_l1), (a.dropped_l1, b.dropped_l1)):
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-5, abs=1e-30)


def _stack(t: int, cols: int, seed: int, kind: str) -> torch.Tensor:
    """(T + 1, cols): τ_1..τ_T, then Δ, shaped like the inputs each test names."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t + 1, cols, generator=gen)
    if kind == "sparse":  # many exact zeros in the τ_i and Δ == 0 (also -0.0) at a third of the entries
        x[:t][torch.rand(t, cols, generator=gen) < 0.5] = 0.0
        dropped = torch.rand(cols, generator=gen) < 0.33
        x[t][dropped] = torch.where(torch.rand(cols, generator=gen) < 0.5, 0.0, -0.0)[dropped]
        x[:, 1::7] = torch.tensor([1.0, -1.0] * t + [1.0])[: t + 1, None]  # Σ τ_i exactly 0 or ±1
    elif kind == "same_sign":
        x = x.abs()
    elif kind == "nonfinite":
        x[0, cols // 2] = float("nan")
        x[t - 1, cols // 3] = float("inf")
        x[t - 1, cols // 5] = float("-inf")
        x[t, cols // 4] = float("nan")
    return x


@needs_cc
@pytest.mark.parametrize("t", [1, 2, 4, 12])
@pytest.mark.parametrize("kind", ["random", "sparse", "same_sign", "nonfinite"])
def test_the_kernel_gives_the_torch_paths_figures(t, kind, monkeypatch):
    rows = _stack(t, 5003, seed=t, kind=kind)
    fast, slow = _sums(rows, monkeypatch, on=True), _sums(rows, monkeypatch, on=False)
    _assert_same_figures(fast, slow)
    if kind == "same_sign":
        assert fast.conflicts == 0
    if kind == "sparse" and t > 1:
        assert fast.conflicts and fast.conflict_dropped and fast.conflict_summed  # every count exercised
    if kind == "nonfinite":
        assert fast.finite() == slow.finite() == (False, False)


@needs_cc
@pytest.mark.parametrize("cols", [0, 1, 7, 15, 16, 17, 1023, 1025, 3 * 1024 + 5])
def test_tiny_and_odd_lengths(cols, monkeypatch):
    rows = _stack(4, cols, seed=cols, kind="sparse")
    _assert_same_figures(_sums(rows, monkeypatch, on=True), _sums(rows, monkeypatch, on=False))


@needs_cc
def test_both_halves_and_strided_rows(monkeypatch):
    """Column steps small enough that the second half runs on the engine's second lane, and rows that are
    views into a wider buffer (row stride > columns): same figures, and the same on every run."""
    monkeypatch.setattr(geometry, "GEOMETRY_STEP_ELEMS", 4096)
    wide = _stack(12, 40_000, seed=3, kind="sparse")
    rows = wide[:, 1234 : 1234 + 30_000]
    assert rows.stride(0) == 40_000
    fast = _sums(rows, monkeypatch, on=True)
    _assert_same_figures(fast, _sums(rows, monkeypatch, on=False))
    again = _sums(rows, monkeypatch, on=True)
    assert torch.equal(fast.gram, again.gram) and (fast.task_l1, fast.dropped_l1) == (
        again.task_l1,
        again.dropped_l1,
    )


@needs_cc
@pytest.mark.parametrize("layout", ["float32", "bfloat16", "strided"])
def test_delta_formed_while_summing_is_torch_subs_bit_for_bit(layout, monkeypatch):
    """With `merged`, the base's row becomes Δ = merged − base range by range (both halves): the kernel's
    Δ equals torch.sub's exactly; a merged the kernel cannot read (bf16, strided) is subtracted by torch."""
    monkeypatch.setattr(geometry, "GEOMETRY_STEP_ELEMS", 4096)
    stack = _stack(4, 20_001, seed=5, kind="sparse")
    merged = stack[:4].sum(0) * 0.5 + stack[4]
    merged[::3] = stack[4, ::3]  # Δ == 0 there
    if layout == "bfloat16":
        merged = merged.bfloat16()
    elif layout == "strided":
        merged = torch.stack([merged, merged], 1)[:, 0]
    runs = []
    for on in (True, False):
        monkeypatch.setenv(build.SWITCH_ENV, "1" if on else "0")
        rows = stack.clone()
        sums = TensorSums(4)
        sums.add(rows, merged)
        runs.append((rows, sums))
    (fast_rows, fast), (slow_rows, slow) = runs
    assert torch.equal(fast_rows, slow_rows)
    assert torch.equal(fast_rows[4], torch.sub(merged, stack[4]))
    _assert_same_figures(fast, slow)
    assert fast.conflict_dropped > 0


@needs_cc
def test_a_whole_merge_records_the_same_geometry_either_way(tmp_path, tiny_llama_family, monkeypatch):
    base, cks = tiny_llama_family
    recipe = Recipe("ties", str(base), [ModelEntry(str(c), {"weight": 1.0, "density": 0.5}) for c in cks], {})
    stats = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(build.SWITCH_ENV, switch)
        stats[switch] = run_merge(recipe, DirectorySink(tmp_path / switch), device="cpu").stats
    fast, slow = stats["1"], stats["0"]
    assert [t.name for t in fast.tensors] == [t.name for t in slow.tensors]
    for x, y in zip(fast.tensors, slow.tensors, strict=True):
        assert (x.sign_conflict, x.conflict_dropped, x.conflict_summed) == (
            y.sign_conflict,
            y.conflict_dropped,
            y.conflict_summed,
        )
        assert x.task_norms == pytest.approx(y.task_norms, rel=1e-5)
        assert x.delta_norm == pytest.approx(y.delta_norm, rel=1e-5)
        assert (x.task_l1, x.dropped_l1) == pytest.approx((y.task_l1, y.dropped_l1), rel=1e-5)
    assert fast.summary()["conflict_dropped"] > 0  # TIES drops entries: the kept-mass sums are exercised
    assert sum(fast.model_cosines, []) == pytest.approx(sum(slow.model_cosines, []), rel=1e-5, abs=1e-6)


@needs_cc
def test_the_kernel_runs_by_default_and_the_switch_turns_it_off(monkeypatch):
    rows = _stack(2, 100, seed=0, kind="random")
    gram = torch.zeros(3, 3, dtype=torch.float64)
    monkeypatch.delenv(build.SWITCH_ENV, raising=False)
    assert native.column_sums(rows, 0, 100, gram) is not None and gram[0, 0] > 0
    monkeypatch.setenv(build.SWITCH_ENV, "0")
    untouched = torch.zeros(3, 3, dtype=torch.float64)
    assert native.column_sums(rows, 0, 100, untouched) is None and not untouched.any()
    assert native.column_sums(rows.double(), 0, 100, gram) is None  # not its layout: the torch path


@needs_cc
def test_a_nonfinite_input_is_still_refused(monkeypatch):
    monkeypatch.setenv(build.SWITCH_ENV, "1")
    rec = GeometryRecorder(2, labels=["a", "b"])
    base = torch.zeros(4, 300)
    models = [torch.randn(4, 300), torch.randn(4, 300)]
    models[1][2, 7] = float("nan")
    with pytest.raises(NonFiniteError, match=r"checkpoint 'b'.*1 NaN/Inf"):
        rec.record("w", base, models, models[0].clone())


def _hand_figures(rec: GeometryRecorder):
    """τ1 = [3, -1, 1], τ2 = [-1, 2, 1], Δ = [2, -0.5, 0] (test_geometry's hand-computed case)."""
    u = rec.record(
        "u",
        torch.zeros(3),
        [torch.tensor([3.0, -1.0, 1.0]), torch.tensor([-1.0, 2.0, 1.0])],
        torch.tensor([2.0, -0.5, 0.0]),
    )
    assert u.sign_conflict == pytest.approx(2 / 3)
    assert (u.conflict_dropped, u.conflict_summed) == (0.0, 0.5)
    assert (u.task_l1, u.dropped_l1) == (9.0, 2.0)
    assert u.task_dots == pytest.approx([6.5, -3.0])


@pytest.mark.parametrize("compiler", ["mergelab-no-such-cc", "false"])
def test_a_compiler_that_is_missing_or_fails_falls_back_to_torch(compiler, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(build.SWITCH_ENV, "1")
    monkeypatch.setenv(build.COMPILER_ENV, compiler)
    monkeypatch.setenv(build.DIR_ENV, str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="merging.native.build"):
        assert build.load(native.SOURCE) is None
        assert build.load(native.SOURCE) is None  # tried once: one message
        _hand_figures(GeometryRecorder(2))
    messages = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(messages) == 1 and ("no C compiler" in messages[0] or "exited" in messages[0])
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


@needs_cc
def test_a_build_lands_as_one_library_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv(build.DIR_ENV, str(tmp_path / "a"))
    assert build.load(native.SOURCE) is not None
    first = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(first) == 1 and first[0].startswith("geometry_sums-") and first[0].endswith(".so")
    edited = tmp_path / "geometry_sums.c"
    edited.write_text(native.SOURCE.read_text() + "\n/* edited */\n")
    header = native.SOURCE.with_name("geometry_tile.h")
    (tmp_path / header.name).write_text(header.read_text())
    assert build.load(edited) is not None
    second = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(second) == 2 and first[0] in second  # an edited source never loads the old library
    (tmp_path / header.name).write_text(header.read_text() + "\n/* edited */\n")
    build._load.cache_clear()  # as a new process would: one build attempt per source per process
    assert build.load(edited) is not None
    third = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(third) == 3 and set(second) < set(third)  # nor does a source whose header was edited


def test_the_cache_is_the_package_build_dir_else_the_workspace_else_a_temp_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(build.DIR_ENV, raising=False)
    monkeypatch.setenv("MERGELAB_HOME", str(tmp_path / "home"))
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder below a file cannot be made: that candidate is skipped
    monkeypatch.setattr(build, "PACKAGE_BUILD_DIR", tmp_path / "pkg" / "_build")
    assert build.cache_folder() == tmp_path / "pkg" / "_build"
    monkeypatch.setattr(build, "PACKAGE_BUILD_DIR", blocked / "_build")
    assert build.cache_folder() == tmp_path / "home" / "cache" / "native"
    monkeypatch.setenv("MERGELAB_HOME", str(blocked / "home"))
    monkeypatch.setattr(build.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert build.cache_folder() == tmp_path / "tmp" / f"mergelab-native-{os.getuid()}"
    monkeypatch.setenv(build.DIR_ENV, str(tmp_path / "named"))
    assert build.cache_folder() == tmp_path / "named"


CONCURRENT_FIRST_USE = """
import ctypes, os, sys, time
from pathlib import Path
from merging.native import build
from merging.native.geometry_sums import SOURCE

ready = Path(sys.argv[1])
(ready / f"ready-{os.getpid()}").touch()
deadline = time.time() + 60
while len(list(ready.glob("ready-*"))) < 2 and time.time() < deadline:
    time.sleep(0.005)
lib = build.load(SOURCE)
x = (ctypes.c_float * 6)(1, 2, -3, 4, 0, 0)  # τ = [1, 2, -3], Δ = [4, 0, 0]
gram = (ctypes.c_double * 4)()
l1 = (ctypes.c_double * 2)()
counts = (ctypes.c_int64 * 3)()
assert lib.mergelab_geometry_sums(x, ctypes.c_int64(3), 2, ctypes.c_int64(3), None, gram, l1, counts) == 0
print(list(gram), list(l1), list(counts))
"""


@needs_cc
def test_two_processes_compiling_at_once_both_load_a_whole_library(tmp_path):
    cache, ready = tmp_path / "cache", tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, build.DIR_ENV: str(cache), build.SWITCH_ENV: "1"}
    script = textwrap.dedent(CONCURRENT_FIRST_USE)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ready)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["[14.0, 4.0, 4.0, 16.0] [6.0, 5.0] [0, 0, 0]"] * 2
    names = [p.name for p in cache.iterdir()]
    assert len(names) == 1 and names[0].endswith(".so"), names  # no temporary files left
