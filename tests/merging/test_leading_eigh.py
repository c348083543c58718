"""A few leading eigenpairs through LAPACK's syevr (merging/methods/leading_eigh.py): the same pairs as the
whole eigendecomposition from either bundled OpenBLAS, the lower triangle only, one BLAS thread, the GIL
free during the call, clear errors; and the subspace methods on that route against the float64 reference,
lane order and row blocks bit-equal."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from merging.methods import leading_eigh as le
from merging.methods import subspace
from merging.methods.subspace import GramEigh, iso_cts_delta, top_triplets, tsvm_delta
from tests.merging.test_methods_subspace_exact import (
    assert_near,
    decaying_tvs,
    random_tvs,
    ref_iso_cts,
    ref_svd,
    ref_tsvm,
)
from tests.merging.test_methods_subspace_lanes import _merger_delta, sequential


def gram(n, dtype, seed):
    a = torch.randn(2 * n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a.T @ a).to(dtype)


@pytest.fixture
def leading_route(monkeypatch):
    """Small test matrices take the syevr route (in the bench family it starts at 512 wide)."""
    monkeypatch.setattr(le, "MIN_SIDE", 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_leading_pairs_are_the_whole_decompositions(dtype):
    g = gram(40, dtype, seed=1)
    lam, q = le.leading_eigh(g.clone(), 7)
    full_lam, full_q = torch.linalg.eigh(g)
    assert lam.shape == (7,) and q.shape == (40, 7) and lam.dtype == q.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(lam, full_lam.flip(0)[:7], rtol=tol, atol=0)
    # each eigenvector up to its sign (the eigenvalues here are distinct)
    torch.testing.assert_close(q.abs(), full_q.flip(1)[:, :7].abs(), rtol=0, atol=100 * tol)
    torch.testing.assert_close(q.T @ q, torch.eye(7, dtype=dtype), rtol=0, atol=10 * tol)


def test_only_the_lower_triangle_is_read():
    g = gram(30, torch.float64, seed=2)
    junk = torch.triu(torch.full_like(g, 1e6), diagonal=1)  # what the Gram strips leave above the diagonal
    lam, _ = le.leading_eigh(torch.tril(g) + junk, 3)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(g).flip(0)[:3])


@pytest.mark.parametrize(
    ("g", "k", "message"),
    [
        (torch.zeros(4, 5), 2, "square"),
        (torch.zeros(4, 4), 0, "0 < k"),
        (torch.zeros(4, 4), 5, "0 < k"),
        (torch.zeros(4, 4, dtype=torch.float16), 2, "float32/float64"),
    ],
)
def test_bad_input_is_refused(g, k, message):
    with pytest.raises(ValueError, match=message):
        le.leading_eigh(g, k)


class _Reports:
    """A syevr that reports `info` (LAPACK's failure codes are hard to provoke with real input)."""

    def __init__(self, info, found=1):
        self.info, self.found = info, found

    def syevr(self, *args):
        return self.found, self.info


def test_a_failed_solve_is_a_linalg_error(monkeypatch):
    """LAPACK reporting no convergence reads as torch.linalg.eigh's failure, which the Gram route's callers
    already answer with the SVD; a bad argument is a ValueError."""
    monkeypatch.setattr(le, "_FOUND", [_Reports(3)])
    with pytest.raises(torch.linalg.LinAlgError, match="info 3"):
        le.leading_eigh(gram(6, torch.float64, seed=3), 2)
    monkeypatch.setattr(le, "_FOUND", [_Reports(-5)])
    with pytest.raises(ValueError, match="argument 5"):
        le.leading_eigh(gram(6, torch.float64, seed=3), 2)


def test_without_syevr_the_whole_decomposition_is_taken(monkeypatch):
    monkeypatch.setattr(le, "_FOUND", [None])
    assert not le.pays(1024, 52)
    with pytest.raises(RuntimeError, match="no LAPACKE syevr"):
        le.leading_eigh(gram(6, torch.float64, seed=3), 2)


def test_numpys_openblas_serves_too():
    """The second source (numpy's wheel, 64-bit LAPACK integers) gives the same pairs as the first."""
    path = le._bundled_openblas("numpy", "numpy.libs", "libscipy_openblas64_*")
    if path is None:
        pytest.skip("numpy here does not bundle OpenBLAS")
    import ctypes

    numpys = le._Lapacke(path, "scipy_", "64_", ctypes.c_int64)
    g = gram(40, torch.float64, seed=12)
    w, z = torch.empty(40, dtype=g.dtype), torch.empty((5, 40), dtype=g.dtype)
    assert numpys.syevr(g.clone(), w, z, 40, 5) == (5, 0)
    torch.testing.assert_close(w[:5].flip(0), le.leading_eigh(g.clone(), 5)[0])


def test_blas_runs_on_one_thread_in_every_lane(monkeypatch):
    """Held at one from whichever thread calls, and set back to one if raised since."""
    lapacke = le._lapacke()
    lapacke._set_threads(2)  # someone raised it
    seen = []
    real = lapacke._fns[torch.float64]

    def watched(*args):
        seen.append(lapacke._get_threads())
        return real(*args)

    monkeypatch.setitem(lapacke._fns, torch.float64, watched)
    lane = threading.Thread(target=le.leading_eigh, args=(gram(16, torch.float64, seed=5), 3))
    lane.start()
    lane.join()
    le.leading_eigh(gram(16, torch.float64, seed=6), 3)
    assert seen == [1, 1]


def test_the_gil_is_free_during_the_call():
    """The second lane's Python runs while this lane is inside syevr (scipy's wrappers held the GIL for the
    whole call, so the lanes took turns): another thread's ticks leave no gap near the call's length."""
    g = gram(1000, torch.float64, seed=7)
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    other = threading.Thread(target=ticker)
    other.start()
    while not ticks:
        time.sleep(0.001)
    start = time.perf_counter()
    le.leading_eigh(g, 250)
    end = time.perf_counter()
    stop.set()
    other.join()
    inside = [start] + [t for t in ticks if start < t < end] + [end]
    gap = max(b - a for a, b in zip(inside, inside[1:], strict=False))
    assert gap < 0.5 * (end - start), f"no tick for {gap:.3f} s of a {end - start:.3f} s call"


def test_the_route_is_chosen_by_shape():
    assert le.pays(1024, 52) and le.pays(1024, 256)
    assert not le.pays(1024, 257)  # past a quarter the whole decomposition is as fast
    assert not le.pays(256, 13)  # small matrices: the call's overheads eat the gain
    a = torch.randn(600, 520)
    assert GramEigh.of(a, 100, only_leading=True).partial
    assert not GramEigh.of(a, 100).partial  # callers that need the rest get every pair
    assert not GramEigh.of(a, 300, only_leading=True).partial


def test_a_partial_decomposition_refuses_what_needs_every_pair(leading_route):
    g = GramEigh.of(torch.randn(40, 30), 5, only_leading=True)
    assert g.partial and g.lam.shape == (5,)
    with pytest.raises(ValueError, match="every eigenpair"):
        g.apply(g.lam)
    with pytest.raises(ValueError, match="every eigenpair"):
        g.singular_values()


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (40, 40)])
def test_top_triplets_on_the_leading_route(leading_route, shape):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    assert GramEigh.of(a, 6, only_leading=True).partial
    u, s, v = top_triplets(a, 6)
    ru, rs, rvh = ref_svd(a)
    assert_near(s, rs[:6])
    assert_near((u * s) @ v.T, (ru[:, :6] * rs[:6]) @ rvh[:6])


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (40, 40)])
def test_methods_on_the_leading_route_match_the_reference(leading_route, shape, monkeypatch):
    calls = []
    real = le.leading_eigh
    monkeypatch.setattr(subspace, "leading_eigh", lambda g, k: calls.append(k) or real(g, k))
    tv = random_tvs(4, *shape, seed=8)
    assert_near(tsvm_delta(tv), ref_tsvm(tv))
    tv = random_tvs(12, *shape, seed=9)
    assert_near(iso_cts_delta(tv, 0.8), ref_iso_cts(tv, 0.8))
    tv = decaying_tvs(4, *shape, cond=1e4, seed=10)
    assert_near(tsvm_delta(tv), ref_tsvm(tv))
    assert calls  # the route was taken


def test_lanes_and_row_blocks_give_the_same_bytes_on_the_leading_route(leading_route, two_threads):
    from merging.methods.gathered import IsoCtsMerger, TsvmMerger

    tv = random_tvs(4, 96, 64, seed=11)
    assert torch.equal(tsvm_delta(tv), sequential(lambda: tsvm_delta(tv)))
    assert torch.equal(iso_cts_delta(tv, 0.8), sequential(lambda: iso_cts_delta(tv, 0.8)))
    assert torch.equal(tsvm_delta(tv), tsvm_delta(tv.clone()))  # and again: deterministic
    params = {"lambda": 1.0, "common_space_fraction": 0.8}
    for merger_cls in (TsvmMerger, IsoCtsMerger):
        whole = _merger_delta(merger_cls, tv[:, :72, :56], params, blocks=1)
        assert torch.equal(whole, _merger_delta(merger_cls, tv[:, :72, :56], params, blocks=3))
