"""Model Stock, TSV-M, Iso-C, Iso-CTS and Subspace Boosting (methods.md §2-3) on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from merging.methods import TensorInputs, get_method, resolve_params
from merging.methods.boosting import cutoff_index
from merging.methods.subspace import iso_cts_sizes

T = torch.tensor
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def merge(method, base, models, params=None, model_params=None, name=Q_PROJ):
    spec = get_method(method)
    g, mp = resolve_params(spec, params or {}, model_params or [{} for _ in models])
    return spec.merge(TensorInputs(name, base, models, mp, g, torch.Generator().manual_seed(0)))


def with_tvs(base, tvs):
    return [base + tv for tv in tvs]


# ---- Model Stock -----------------------------------------------------------------------------------------


def test_model_stock_orthogonal_task_vectors_keep_base():
    base = T([1.0, 1.0])
    assert_close(merge("model_stock", base, with_tvs(base, [T([1.0, 0.0]), T([0.0, 1.0])])), base)


def test_model_stock_two_models():
    # cos = 1/√2 → t = 2c/(1+c) = 2(√2 − 1); θ = θ0 + t·mean(τ) = θ0 + t·[1, 0.5]
    base = T([1.0, -1.0])
    out = merge("model_stock", base, with_tvs(base, [T([1.0, 0.0]), T([1.0, 1.0])]))
    t = 2 * (math.sqrt(2) - 1)
    assert_close(out, base + T([t, 0.5 * t]))


def test_model_stock_singular_two_models():
    # cos = −1 → 1 + cos = 0 → t = 0 (no division by zero)
    base = T([2.0, 3.0])
    out = merge("model_stock", base, with_tvs(base, [T([1.0, 0.0]), T([-1.0, 0.0])]))
    assert_close(out, base)


def test_model_stock_singular_three_models():
    # three unit vectors 120° apart: mean cos = −1/2 → 1 + 2·(−1/2) = 0 → t = 0
    h = math.sqrt(3) / 2
    base = T([0.5, 0.5])
    out = merge("model_stock", base, with_tvs(base, [T([1.0, 0.0]), T([-0.5, h]), T([-0.5, -h])]))
    assert_close(out, base)


def test_model_stock_zero_task_vector():
    # ‖τ1‖ = 0 is clamped, cos = 0 → t = 0
    base = T([1.0, 2.0])
    assert_close(merge("model_stock", base, with_tvs(base, [T([0.0, 0.0]), T([1.0, 1.0])])), base)


def test_model_stock_per_tensor_vs_filter_wise():
    base = T([[1.0, 2.0], [3.0, 4.0]])
    models = with_tvs(base, [T([[1.0, 0.0], [1.0, 1.0]]), T([[0.0, 1.0], [1.0, 1.0]])])
    # whole tensor: cos = 2/3 → t = (4/3)/(5/3) = 0.8; mean τ = [[.5, .5], [1, 1]]
    assert_close(merge("model_stock", base, models), base + T([[0.4, 0.4], [0.8, 0.8]]))
    # per row: row 0 cos 0 → t 0; row 1 cos 1 → t = 2/2 = 1
    fw = merge("model_stock", base, models, {"filter_wise": True})
    assert_close(fw, base + T([[0.0, 0.0], [1.0, 1.0]]))


def test_model_stock_filter_wise_vector_is_one_row():
    base = T([0.0, 0.0])
    models = with_tvs(base, [T([1.0, 0.0]), T([1.0, 1.0])])
    assert_close(
        merge("model_stock", base, models, {"filter_wise": True}), merge("model_stock", base, models)
    )


# ---- TSV-M -----------------------------------------------------------------------------------------------


def test_tsvm_rank_not_divisible_by_tasks():
    # 3×3, T = 2 → k = 1 per task, one zero-padded slot. τ1 = 2·e1 e1ᵀ, τ2 = c e2ᵀ with c = (e1+e2)/√2.
    # Ucat = [e1, c]: its polar factor is the rotation by −22.5° in the e1/e2 plane; Vcat = [e1, e2].
    s = 1 / math.sqrt(2)
    tv1 = T([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    tv2 = T([[0.0, s, 0.0], [0.0, s, 0.0], [0.0, 0.0, 0.0]])
    base = torch.full((3, 3), 0.5)
    out = merge("tsvm", base, with_tvs(base, [tv1, tv2]))
    co, si = math.cos(math.pi / 8), math.sin(math.pi / 8)
    expected = T([[2 * co, si, 0.0], [-2 * si, co, 0.0], [0.0, 0.0, 0.0]])
    assert_close(out, base + expected)


def test_tsvm_orthogonal_tasks_keep_their_top_triplets():
    tv1 = torch.diag(T([3.0, 1.0, 0.0]))
    tv2 = torch.diag(T([0.0, 0.0, 2.0]))
    base = torch.zeros(3, 3)
    assert_close(merge("tsvm", base, [tv1, tv2]), torch.diag(T([3.0, 0.0, 2.0])))


def test_tsvm_more_tasks_than_rank_gives_base():
    base = torch.ones(2, 2)
    tvs = [torch.eye(2), -torch.eye(2), 2 * torch.eye(2)]
    assert_close(merge("tsvm", base, with_tvs(base, tvs)), base)


def test_tsvm_lambda():
    tv1, tv2 = torch.diag(T([3.0, 1.0, 0.0])), torch.diag(T([0.0, 0.0, 2.0]))
    out = merge("tsvm", torch.zeros(3, 3), [tv1, tv2], {"lambda": 0.5})
    assert_close(out, torch.diag(T([1.5, 0.0, 1.0])))


# ---- Iso-C / Iso-CTS -------------------------------------------------------------------------------------


def test_iso_c_flattens_spectrum():
    base = torch.ones(2, 2)
    out = merge("iso_c", base, with_tvs(base, [torch.diag(T([3.0, 0.0])), torch.diag(T([0.0, 1.0]))]))
    assert_close(out, base + torch.diag(T([2.0, 2.0])))


def test_iso_c_rectangular_keeps_directions():
    # M = [[4,0,0],[0,-2,0]]: σ = (4, 2), U Vᵀ = [[1,0,0],[0,-1,0]], σ̄ = 3
    tv1 = T([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    tv2 = T([[0.0, 0.0, 0.0], [0.0, -2.0, 0.0]])
    out = merge("iso_c", torch.zeros(2, 3), [tv1, tv2])
    assert_close(out, T([[3.0, 0.0, 0.0], [0.0, -3.0, 0.0]]))


@pytest.mark.parametrize(
    ("r", "tasks", "fraction", "expected"),
    [
        (10, 3, 0.8, (7, 1)),  # c0 = 8, 10−8 = 2 not divisible by 3 → c = 7
        (10, 2, 0.8, (8, 1)),
        (16, 3, 0.8, (10, 2)),  # c0 = 12 → 11 → 10
        (6, 3, 0.0, (0, 2)),
        (8, 3, 1.0, (8, 0)),
        (3, 4, 0.8, (3, 0)),  # more tasks than rank: no c ≥ 0 works, c = r mod T
    ],
)
def test_iso_cts_sizes(r, tasks, fraction, expected):
    c, d = iso_cts_sizes(r, tasks, fraction)
    assert (c, d) == expected
    assert c + tasks * d == r


def test_iso_cts_common_and_task_blocks():
    # f = 0.5, r = 3, T = 2 → c = 1, d = 1. M = diag(5, 1, 0.5): common e1 (σ 5); after projecting e1 out,
    # τ1 keeps e2 (σ 1) and τ2 keeps e3 (σ 0.5); U = V = I, s̄ = 6.5/3.
    tv1, tv2 = torch.diag(T([3.0, 1.0, 0.0])), torch.diag(T([2.0, 0.0, 0.5]))
    base = torch.full((3, 3), -1.0)
    out = merge("iso_cts", base, with_tvs(base, [tv1, tv2]), {"common_space_fraction": 0.5})
    assert_close(out, base + torch.eye(3) * (6.5 / 3))


@pytest.mark.parametrize("method", ["tsvm", "iso_c", "iso_cts"])
@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"])
def test_subspace_methods_mean_on_embeddings_and_vectors(method, name):
    if name == "model.norm.weight":
        base, tvs = T([1.0, 2.0, 3.0]), [T([3.0, 0.0, -3.0]), T([1.0, 2.0, 3.0])]
        expected = T([2.0, 1.0, 0.0])
    else:
        base, tvs = torch.zeros(2, 2), [torch.diag(T([3.0, 0.0])), torch.diag(T([0.0, 1.0]))]
        expected = torch.diag(T([1.5, 0.5]))
    out = merge(method, base, with_tvs(base, tvs), name=name)
    assert_close(out, base + expected)


# ---- Subspace Boosting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("beta", "cumsum", "expected"),
    [
        (0.2, True, 0),  # energy [0.5, 0.75, 0.875, 1.0]
        (0.6, True, 1),
        (0.8, True, 2),
        (1.0, True, 3),
        (0.3, False, 1),  # int(0.3·4)
        (0.5, False, 2),
        (1.0, False, 3),  # int(4) clamped to the last index
    ],
)
def test_boosting_cutoff(beta, cumsum, expected):
    assert cutoff_index(T([4.0, 2.0, 1.0, 1.0]), beta, cumsum) == expected


def test_boosting_cutoff_without_hit_is_last_index():
    assert cutoff_index(T([4.0, 2.0, 1.0, 1.0]), 1.5, True) == 3


def test_task_arithmetic_sb_boosts_weak_directions():
    # Δ = [[0,4],[-2,0]]: σ = (4, 2); β = 0.2 → cutoff 0 → σ* = (4, 4), Δ' = 4·U Vᵀ
    base = torch.ones(2, 2)
    models = with_tvs(base, [T([[0.0, 4.0], [-2.0, 0.0]])])
    out = merge("task_arithmetic_sb", base, models, {"weight": 1.0, "svd_thresh": 0.2})
    assert_close(out, base + T([[0.0, 4.0], [-4.0, 0.0]]))
    # cumsum off, β = 0.5 → cutoff int(1) = 1 → nothing changes
    out = merge("task_arithmetic_sb", base, models, {"weight": 1.0, "svd_thresh": 0.5, "cumsum": False})
    assert_close(out, models[0])


def test_task_arithmetic_sb_spectrum_floor():
    # Δ = diag(4, 2, 1, 1), β = 0.6 → cutoff 1 → σ* = (4, 2, 2, 2)
    base = torch.zeros(4, 4)
    models = [torch.diag(T([4.0, 2.0, 1.0, 1.0]))]
    out = merge("task_arithmetic_sb", base, models, {"weight": 1.0, "svd_thresh": 0.6})
    assert_close(out, torch.diag(T([4.0, 2.0, 2.0, 2.0])))


def test_ties_sb_boosts_after_lambda():
    base = torch.zeros(2, 2)
    tv = T([[0.0, 4.0], [-2.0, 0.0]])
    out = merge("ties_sb", base, [tv, tv], {"weight": 1.0, "lambda": 0.5})
    assert_close(out, T([[0.0, 2.0], [-2.0, 0.0]]))


@pytest.mark.parametrize(
    ("name", "boosted"),
    [
        ("model.layers.3.self_attn.o_proj.weight", True),
        ("model.layers.3.self_attn.k_proj.weight", True),
        ("model.layers.3.mlp.down_proj.weight", True),
        ("model.layers.3.mlp.gate_proj.weight", True),
        ("model.embed_tokens.weight", False),
        ("lm_head.weight", False),
        ("model.layers.3.self_attn.q_norm.weight", False),
    ],
)
def test_subspace_boosting_tensor_filter(name, boosted):
    base = torch.zeros(2, 2)
    tv = T([[0.0, 4.0], [-2.0, 0.0]])
    out = merge("task_arithmetic_sb", base, [tv], {"weight": 1.0}, name=name)
    assert_close(out, T([[0.0, 4.0], [-4.0, 0.0]]) if boosted else tv)


def test_subspace_boosting_skips_vectors():
    base = T([0.0, 0.0])
    out = merge(
        "task_arithmetic_sb", base, [T([4.0, 1.0])], {"weight": 1.0}, name="model.layers.0.mlp.up_proj.bias"
    )
    assert_close(out, T([4.0, 1.0]))


def test_subspace_boosting_zero_delta_stays_zero():
    base = torch.ones(3, 3)
    assert_close(merge("task_arithmetic_sb", base, [base.clone()], {"weight": 1.0}), base)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (3, 5, 9)])
def test_svd_helper_wide_tall_and_batched(shape):
    from merging.methods.subspace import svd

    a = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    u, s, vh = svd(a)
    assert_close((u * s.unsqueeze(-2)) @ vh, a, atol=1e-5, rtol=1e-5)
    eye = torch.eye(s.shape[-1]).expand(*s.shape[:-1], -1, -1)
    assert_close(u.mT @ u, eye, atol=1e-5, rtol=1e-5)
    assert_close(vh @ vh.mT, eye, atol=1e-5, rtol=1e-5)
    assert bool((s[..., :-1] >= s[..., 1:]).all())
