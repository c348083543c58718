"""A few leading eigenpairs through LAPACK's syevr (merging/methods/leading_eigh.py): the same pairs as the
whole eigendecomposition, the lower triangle only, one BLAS thread while it runs, clear errors; and the
subspace methods on that route against the float64 reference, lane order and row blocks bit-equal."""

from __future__ import annotations

import threading

import pytest
import torch
from threadpoolctl import OpenBLASController, ThreadpoolController

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


def test_a_failed_solve_is_a_linalg_error(monkeypatch):
    """LAPACK reporting no convergence reads as torch.linalg.eigh's failure, which the Gram route's callers
    already answer with the SVD."""

    class NotConverged:
        @staticmethod
        def dsyevr(a, **kwargs):
            return a[0], a[:, :2], 1, None, 3

    monkeypatch.setattr(le, "_LAPACK", NotConverged)
    with pytest.raises(torch.linalg.LinAlgError, match="info 3"):
        le.leading_eigh(gram(6, torch.float64, seed=3), 2)


def _other_blas() -> dict[str, int]:
    """Thread counts of the process's BLAS libraries other than scipy's LAPACK's."""
    ours = {lib.filepath for lib in le._BLAS}
    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return {lib.filepath: lib.get_num_threads() for lib in blas if lib.filepath not in ours}


def test_scipys_blas_runs_on_one_thread_in_every_lane(monkeypatch):
    """Held at one by whichever thread calls first, and set back to one if raised since; the other BLAS
    libraries of the process (numpy's) keep their count."""
    le.leading_eigh(gram(8, torch.float32, seed=4), 2)  # scipy imported, its BLAS found
    others = _other_blas()
    OpenBLASController.clear_controlling_thread(force=True)
    for lib in le._BLAS:
        lib.set_num_threads(2)  # someone raised it
    OpenBLASController.clear_controlling_thread()
    seen = []
    real = le._lapack().dsyevr

    def watched(a, **kwargs):
        seen.append([lib.get_num_threads() for lib in le._BLAS])
        return real(a, **kwargs)

    monkeypatch.setattr(le._lapack(), "dsyevr", watched)
    lane = threading.Thread(target=le.leading_eigh, args=(gram(16, torch.float64, seed=5), 3))
    lane.start()
    lane.join()
    le.leading_eigh(gram(16, torch.float64, seed=6), 3)
    assert le._BLAS and seen == [[1] * len(le._BLAS)] * 2
    assert _other_blas() == others


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


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


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
