"""The fast decompositions behind TSV-M, Iso-C, Iso-CTS and Subspace Boosting (Gram matrices in float64)
against a float64-SVD transcription of methods.md §3, on random, ill-conditioned and rank-deficient
matrices, and the SVD fallback where the Gram route cannot decide."""

from __future__ import annotations

import pytest
import torch

from merging.methods import boosting, subspace
from merging.methods.boosting import boost, cutoff_index
from merging.methods.subspace import (
    GramEigh,
    decomposition_threads,
    iso_c_delta,
    iso_cts_delta,
    iso_cts_sizes,
    polar,
    top_triplets,
    tsvm_delta,
)

TOL = 1e-4  # relative to the float64 reference (methods.md: results within 1e-4)


# ---- float64 SVD reference, written from methods.md §3 -----------------------------------------------------


def ref_svd(a):
    return torch.linalg.svd(a.double(), full_matrices=False)


def ref_polar(a):
    u, _, vh = ref_svd(a)
    return u @ vh


def ref_tsvm(tv):
    n_tasks, m, n = tv.shape
    r = min(m, n)
    k = r // n_tasks
    ucat = torch.zeros(m, r, dtype=torch.float64)
    vcat = torch.zeros(n, r, dtype=torch.float64)
    scat = torch.zeros(r, dtype=torch.float64)
    for i in range(n_tasks):
        u, s, vh = ref_svd(tv[i])
        ucat[:, i * k : (i + 1) * k] = u[:, :k]
        scat[i * k : (i + 1) * k] = s[:k]
        vcat[:, i * k : (i + 1) * k] = vh[:k].T
    return ref_polar(ucat) @ torch.diag(scat) @ ref_polar(vcat).T


def ref_iso_c(tv):
    u, s, vh = ref_svd(tv.sum(0))
    return s.mean() * u @ vh


def ref_iso_cts(tv, fraction):
    n_tasks, m, n = tv.shape
    c, d = iso_cts_sizes(min(m, n), n_tasks, fraction)
    u, s, vh = ref_svd(tv.sum(0))
    us, ss, vhs = [u[:, :c]], [s[:c]], [vh[:c]]
    for i in range(n_tasks):
        t = tv[i].double()
        ut, st, vht = ref_svd(t - u[:, :c] @ (u[:, :c].T @ t))
        us.append(ut[:, :d])
        ss.append(st[:d])
        vhs.append(vht[:d])
    s_all = torch.cat(ss)
    return s_all.mean() * ref_polar(torch.cat(us, 1)) @ ref_polar(torch.cat(vhs, 0))


def ref_boost(delta, beta, cumsum):
    u, s, vh = ref_svd(delta)
    return u @ torch.diag(s.clamp_min(s[cutoff_index(s, beta, cumsum)])) @ vh


def assert_near(got, ref, tol=TOL):
    assert got.dtype == torch.float32
    ref = ref.double()
    err = (got.double() - ref).norm() / ref.norm()
    worst = (got.double() - ref).abs().max() / ref.abs().max()
    assert err <= tol and worst <= tol, f"relative error {err:.2e}, worst element {worst:.2e}"


# ---- inputs ------------------------------------------------------------------------------------------------


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_tvs(n_tasks, m, n, seed=0):
    return torch.randn(n_tasks, m, n, generator=gen(seed))


def with_spectrum(m, n, s, seed):
    """A random m×n matrix with singular values s (descending, len min(m, n))."""
    g = gen(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return ((u * s) @ v.T).float()


def decaying_tvs(n_tasks, m, n, cond, seed=0):
    """Task vectors whose spectra fall geometrically from 1 to 1/cond (as fine-tuning deltas' do)."""
    s = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), min(m, n), dtype=torch.float64)
    return torch.stack([with_spectrum(m, n, s, seed + i) for i in range(n_tasks)])


def low_rank_tvs(n_tasks, m, n, rank, seed=0):
    g = gen(seed)
    return torch.stack(
        [torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) for _ in range(n_tasks)]
    )


SHAPES = [(48, 32), (32, 48), (40, 40)]


@pytest.fixture
def no_svd(monkeypatch):
    """The Gram route must decide these inputs: an SVD call fails the test."""

    def refuse(a):
        raise AssertionError(f"SVD of a {tuple(a.shape)} matrix: the Gram route should have decided it")

    monkeypatch.setattr(subspace, "svd", refuse)
    monkeypatch.setattr(boosting, "svd", refuse)


# ---- the building blocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_matches_reference(shape, no_svd):
    a = torch.randn(shape, generator=gen(1))
    assert_near(polar(a), ref_polar(a))


def test_polar_of_ill_conditioned_matrix(no_svd):
    s = torch.logspace(0, -4, 40, dtype=torch.float64)  # κ = 1e4: the Gram route still decides it
    a = with_spectrum(60, 40, s, seed=2)
    assert GramEigh(a).resolves(40)
    assert_near(polar(a), ref_polar(a))


def test_float64_decomposition_is_applied_in_float32_where_float32_resolves(no_svd):
    """GramEigh.apply splits a float64 decomposition: float32 products over the directions float32 resolves,
    float64 over the rest; the result stays far inside the tolerance."""
    s = torch.logspace(0, -4, 64, dtype=torch.float64)  # λ from 1 to 1e-8: both parts present
    a = with_spectrum(64, 64, s, seed=32)
    g = GramEigh.of(a)
    assert g.lam.dtype == torch.float64
    assert 0 < int((g.lam > g.lam[0] * subspace.F32_RCOND_ALL).sum()) < 64
    assert_near(polar(a), ref_polar(a), tol=1e-5)
    assert_near(boost(a, 0.2, True), ref_boost(a, 0.2, True), tol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_top_triplets_match_svd(shape, no_svd):
    a = torch.randn(shape, generator=gen(3))
    u, s, v = top_triplets(a, 7)
    ru, rs, rvh = ref_svd(a)
    assert u.shape == (shape[0], 7) and v.shape == (shape[1], 7) and s.shape == (7,)
    assert_near(s, rs[:7])
    # each triplet's rank-one part is unique (no repeated singular values here)
    for j in range(7):
        assert_near(torch.outer(u[:, j], v[:, j]), torch.outer(ru[:, j], rvh[j]))


def test_precision_follows_the_conditioning(no_svd):
    tall = torch.randn(120, 40, generator=gen(21))  # κ about 4: float32 resolves all singular values
    assert GramEigh.of(tall).lam.dtype == torch.float32
    assert GramEigh.of(tall.T).lam.dtype == torch.float32
    assert_near(polar(tall.T), ref_polar(tall.T))
    square = torch.randn(40, 40, generator=gen(22))  # smallest singular values near zero: float64
    assert GramEigh.of(square).lam.dtype == torch.float64
    assert GramEigh.of(square, 10).lam.dtype == torch.float32  # its leading quarter is well separated
    s = torch.logspace(0, -0.95, 40, dtype=torch.float64)  # κ = 8.9: float32 for all
    a = with_spectrum(120, 40, s, seed=23)
    assert GramEigh.of(a).lam.dtype == torch.float32
    assert_near(polar(a), ref_polar(a))
    s = torch.logspace(0, -2, 40, dtype=torch.float64)  # κ = 100: float64 for all, and for 30 leading
    a = with_spectrum(120, 40, s, seed=24)
    assert GramEigh.of(a).lam.dtype == torch.float64
    assert GramEigh.of(a, 30).lam.dtype == torch.float64
    assert GramEigh.of(a, 5).lam.dtype == torch.float32
    assert_near(polar(a), ref_polar(a))
    u, sv, v = top_triplets(a, 30)
    ru, rs, rvh = ref_svd(a)
    assert_near((u * sv) @ v.T, (ru[:, :30] * rs[:30]) @ rvh[:30])


def test_rank_deficient_matrix_takes_the_svd(monkeypatch):
    a = torch.randn(30, 3, generator=gen(4)) @ torch.randn(3, 20, generator=gen(5))  # rank 3
    assert GramEigh(a).resolves(3) and not GramEigh(a).resolves(4)
    calls = []
    real_svd = subspace.svd
    monkeypatch.setattr(subspace, "svd", lambda x: calls.append(x.shape) or real_svd(x))
    top_triplets(a, 3)
    assert calls == []
    u, s, v = top_triplets(a, 5)  # the 4th and 5th directions are a null-space basis: LAPACK's
    assert calls == [(30, 20)]
    ru, rs, rvh = real_svd(a)
    torch.testing.assert_close((u, s, v), (ru[:, :5], rs[:5], rvh[:5].T))
    polar(a)
    assert len(calls) == 2


def test_gram_route_falls_back_when_eigh_fails(monkeypatch):
    def failing_eigh(x):
        raise torch.linalg.LinAlgError("failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    a = torch.randn(12, 8, generator=gen(6))
    assert GramEigh.of(a) is None
    assert_near(polar(a), ref_polar(a))
    assert_near(top_triplets(a, 2)[1], ref_svd(a)[1][:2])


def test_decomposition_threads_single_for_small_cpu_matrices_and_restored():
    before = torch.get_num_threads()
    with decomposition_threads(torch.zeros(64, 64)):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with decomposition_threads(torch.zeros(1).expand(3000, subspace.SINGLE_THREAD_MAX_SIDE + 1)):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), decomposition_threads(torch.zeros(4, 4)):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_decomposition_threads_ignore_the_machine_load(monkeypatch):
    """A large matrix keeps torch's threads whatever the load: the thread count changes LAPACK's last bits,
    and a merge's bytes must not depend on what else ran at the time."""
    large = torch.zeros(1).expand(3000, subspace.SINGLE_THREAD_MAX_SIDE + 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for load in (0.5, 50.0):
            monkeypatch.setattr("os.getloadavg", lambda load=load: (load, load, load))
            with decomposition_threads(large):
                assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_methods_run_single_threaded_on_small_cpu_matrices(monkeypatch):
    seen = []  # torch's thread count when each method asks for a decomposition (and forms its Gram matrix)
    real_of = GramEigh.of.__func__

    def of(cls, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_of(cls, *args, **kwargs)

    monkeypatch.setattr(GramEigh, "of", classmethod(of))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tv = random_tvs(3, 24, 16, seed=27)
        tsvm_delta(tv)
        iso_cts_delta(tv, 0.5)
        iso_c_delta(tv)
        boost(tv[0], 0.2, True)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---- the methods -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_tasks", [3, 4])
def test_tsvm_random(shape, n_tasks, no_svd):
    tv = random_tvs(n_tasks, *shape, seed=7)
    assert_near(tsvm_delta(tv), ref_tsvm(tv))


@pytest.mark.parametrize("shape", SHAPES)
def test_tsvm_decaying_spectra(shape, no_svd):
    tv = decaying_tvs(4, *shape, cond=1e4, seed=8)
    assert_near(tsvm_delta(tv), ref_tsvm(tv))


def test_tsvm_twelve_tasks(no_svd):
    tv = random_tvs(12, 64, 48, seed=9)  # k = 4
    assert_near(tsvm_delta(tv), ref_tsvm(tv))


def test_tsvm_more_tasks_than_rank_is_zero():
    tv = random_tvs(5, 4, 6, seed=10)
    assert torch.count_nonzero(tsvm_delta(tv)) == 0


def test_tsvm_low_rank_task_vectors_fall_back_to_the_svd(monkeypatch):
    tv = low_rank_tvs(2, 20, 16, rank=3, seed=11)  # k = 8 > rank: null-space directions in Ucat
    fast = tsvm_delta(tv)
    monkeypatch.setattr(subspace.GramEigh, "of", classmethod(lambda cls, *args, **kwargs: None))
    torch.testing.assert_close(fast, tsvm_delta(tv))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_tasks", [2, 4, 12])
def test_iso_c_random(shape, n_tasks, no_svd):
    tv = random_tvs(n_tasks, *shape, seed=12)
    assert_near(iso_c_delta(tv), ref_iso_c(tv))


def test_iso_c_ill_conditioned(no_svd):
    tv = decaying_tvs(1, 50, 40, cond=3e4, seed=13)
    assert_near(iso_c_delta(tv), ref_iso_c(tv))


def test_iso_c_rank_deficient_sum_falls_back_to_the_svd(monkeypatch):
    tv = low_rank_tvs(2, 20, 16, rank=2, seed=14)
    fast = iso_c_delta(tv)
    monkeypatch.setattr(subspace.GramEigh, "of", classmethod(lambda cls, *args, **kwargs: None))
    torch.testing.assert_close(fast, iso_c_delta(tv))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("n_tasks", "fraction"), [(4, 0.8), (3, 0.5), (12, 0.8), (4, 0.0)])
def test_iso_cts_random(shape, n_tasks, fraction, no_svd):
    tv = random_tvs(n_tasks, *shape, seed=15)
    assert_near(iso_cts_delta(tv, fraction), ref_iso_cts(tv, fraction))


def test_iso_cts_decaying_spectra(no_svd):
    tv = decaying_tvs(4, 48, 40, cond=1e3, seed=16)
    assert_near(iso_cts_delta(tv, 0.8), ref_iso_cts(tv, 0.8))


@pytest.mark.parametrize("shape", [(20, 20), (20, 32), (32, 20)])
def test_iso_cts_rank_deficient_sum_falls_back_to_the_svd(monkeypatch, shape):
    tv = random_tvs(4, *shape, seed=25)
    tv[3] = low_rank_tvs(1, *shape, rank=2, seed=26)[0] - tv[:3].sum(0)
    # Σ τ_i has rank 2 < c = 16: the common block's tail is the SVD's null-space basis, on both routes
    fast = iso_cts_delta(tv, 0.8)
    monkeypatch.setattr(subspace.GramEigh, "of", classmethod(lambda cls, *args, **kwargs: None))
    torch.testing.assert_close(fast, iso_cts_delta(tv, 0.8), rtol=1e-4, atol=1e-4 * fast.abs().max().item())


def orthonormal(m, c, seed):
    return torch.linalg.qr(torch.randn(m, c, generator=gen(seed), dtype=torch.float64))[0].float()


def assert_residual_triplets(tau, u_c, k):
    u, s, v = subspace.residual_top_triplets(tau, u_c, k)
    uc = u_c.double()
    ru, rs, rvh = ref_svd(tau.double() - uc @ (uc.T @ tau.double()))
    assert u.shape == (tau.shape[0], k) and v.shape == (tau.shape[1], k) and s.shape == (k,)
    assert_near(s, rs[:k])
    assert_near((u * s) @ v.T, (ru[:, :k] * rs[:k]) @ rvh[:k])


def test_residual_triplets_without_forming_the_residual(monkeypatch, no_svd):
    formed = []
    real = subspace.top_triplets
    monkeypatch.setattr(subspace, "top_triplets", lambda a, k: formed.append(a.shape) or real(a, k))
    assert_residual_triplets(torch.randn(60, 24, generator=gen(33)), orthonormal(60, 16, seed=34), 4)
    assert formed == []  # RᵀR = τᵀτ − BᵀB decided it


def test_residual_triplets_form_the_residual_where_cancellation_would_cost(monkeypatch, no_svd):
    formed = []
    real = subspace.top_triplets
    monkeypatch.setattr(subspace, "top_triplets", lambda a, k: formed.append(a.shape) or real(a, k))
    u_c = orthonormal(60, 20, seed=35)
    inside = u_c @ torch.randn(20, 24, generator=gen(36))  # τ almost all in span(U_c): a small residual
    tau = inside + 0.05 * torch.randn(60, 24, generator=gen(37))
    assert_residual_triplets(tau, u_c, 4)
    assert formed == [(60, 24)]
    formed.clear()
    s = torch.logspace(0, -3, 24, dtype=torch.float64)  # float32 does not resolve 20 of 24: formed too
    assert_residual_triplets(with_spectrum(60, 24, s, seed=38), u_c[:, :2], 20)
    assert formed == [(60, 24)]


def test_residual_triplets_refuse_what_they_do_not_serve():
    with pytest.raises(ValueError, match="tall float32"):
        subspace.residual_top_triplets(torch.randn(20, 30), torch.zeros(20, 2), 3)
    with pytest.raises(ValueError, match="tall float32"):
        subspace.residual_top_triplets(torch.randn(30, 20), torch.zeros(30, 2), 20)


def test_leading_and_rest_completes_the_column_space(no_svd):
    a = torch.randn(12, 30, generator=gen(26))
    u, s, v, rest = subspace.leading_and_rest(a, 5)
    basis = torch.cat([u, rest], dim=1)
    torch.testing.assert_close(basis.T @ basis, torch.eye(12), atol=1e-5, rtol=0)
    ru, rs, rvh = ref_svd(a)
    assert_near((u * s) @ v.T, (ru[:, :5] * rs[:5]) @ rvh[:5])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("beta", "cumsum"), [(0.2, True), (0.5, False), (1.0, True)])
def test_boost_random(shape, beta, cumsum, no_svd):
    delta = torch.randn(shape, generator=gen(17))
    assert_near(boost(delta, beta, cumsum), ref_boost(delta, beta, cumsum))


def test_boost_ill_conditioned(no_svd):
    delta = decaying_tvs(1, 40, 56, cond=1e4, seed=18)[0]
    assert_near(boost(delta, 0.2, True), ref_boost(delta, 0.2, True))


def test_boost_rank_deficient_falls_back_to_the_svd(monkeypatch):
    delta = low_rank_tvs(1, 16, 12, rank=4, seed=19)[0]
    fast = boost(delta, 0.2, True)
    monkeypatch.setattr(boosting.GramEigh, "of", classmethod(lambda cls, *args, **kwargs: None))
    torch.testing.assert_close(fast, boost(delta, 0.2, True))


@pytest.mark.parametrize("shape", [(37, 11), (11, 37)])
def test_gram_route_in_row_blocks(monkeypatch, shape, no_svd):
    monkeypatch.setattr(subspace, "GRAM_BLOCK_BYTES", 8 * 11 * 4)  # 4 rows of the tall side per block
    a = torch.randn(shape, generator=gen(20))
    assert GramEigh(a).block == 4
    assert_near(polar(a), ref_polar(a))
    u, s, v = top_triplets(a, 3)
    ru, rs, rvh = ref_svd(a)
    assert_near(u @ torch.diag(s) @ v.T, ru[:, :3] @ torch.diag(rs[:3]) @ rvh[:3])
    assert_near(boost(a, 0.2, True), ref_boost(a, 0.2, True))


def test_square_matrix_past_half_its_rank_goes_straight_to_float64(monkeypatch, no_svd):
    """Iso-CTS's common subspace (0.8·r) of a square-ish sum: float32 would not resolve it, so no float32
    Gram matrix is formed first."""
    formed = []
    real_init = GramEigh.__init__

    def init(self, a, dtype=torch.float64, left=False, **kwargs):
        formed.append(dtype)
        real_init(self, a, dtype, left, **kwargs)

    monkeypatch.setattr(GramEigh, "__init__", init)
    a = torch.randn(40, 48, generator=gen(31))
    u, s, v = top_triplets(a, 32)
    assert formed == [torch.float64]
    ru, rs, rvh = ref_svd(a)
    assert_near((u * s) @ v.T, (ru[:, :32] * rs[:32]) @ rvh[:32])
    formed.clear()
    top_triplets(a, 20)  # half the rank: float32 first
    assert formed[0] == torch.float32


def orthonormal_beside(n, c, e, seed, lean=0.0):
    """V_c (n × c, orthonormal in float32) and W (n × e), W leaning into span(V_c) by `lean` (→ 1: the
    pair becomes ill-conditioned)."""
    g = gen(seed)
    vc, _ = torch.linalg.qr(torch.randn(n, c, generator=g, dtype=torch.float64))
    w = torch.randn(n, e, generator=g, dtype=torch.float64)
    w = (1 - lean) * w + lean * vc @ torch.randn(c, e, generator=g, dtype=torch.float64)
    return vc.float(), w.float()


@pytest.mark.parametrize("lean", [0.0, 0.9, 0.999])
def test_polar_beside_orthonormal_matches_reference(monkeypatch, no_svd, lean):
    vc, w = orthonormal_beside(64, 48, 12, seed=41, lean=lean)
    sizes = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda x: sizes.append(x.shape[-1]) or real_eigh(x))
    got = subspace.polar_beside_orthonormal(vc, w)
    assert sizes == [24]  # the 2e × 2e block, not the 60 × 60 Gram matrix
    assert_near(got, ref_polar(torch.cat([vc, w], 1)))


def test_polar_beside_orthonormal_falls_back_where_it_saves_nothing(no_svd):
    vc, w = orthonormal_beside(64, 20, 24, seed=42)  # e ≥ c
    assert torch.equal(subspace.polar_beside_orthonormal(vc, w), polar(torch.cat([vc, w], 1)))
    vc, w = orthonormal_beside(120, 40, 10, seed=43)  # tall: the float32 Gram route
    assert torch.equal(subspace.polar_beside_orthonormal(vc, w), polar(torch.cat([vc, w], 1)))


def test_polar_beside_orthonormal_of_a_rank_deficient_pair_takes_the_whole_route(monkeypatch):
    vc, w = orthonormal_beside(64, 48, 12, seed=44)
    w[:, 0] = vc[:, :3].sum(1)  # in span(V_c): [V_c, W] is rank-deficient
    calls = []
    real_polar = subspace.polar
    monkeypatch.setattr(subspace, "polar", lambda a: calls.append(a.shape) or real_polar(a))
    subspace.polar_beside_orthonormal(vc, w)
    assert calls == [(64, 60)]
