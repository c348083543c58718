"""Task-vector family (methods.md §1): sparsifiers, sign election, divisors, λ; hand-computed tensors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from merging.methods import TensorInputs, all_methods, get_method, resolve_params
from merging.methods import sparsify as sp
from tests.merging.helpers import model_count, required_globals

T = torch.tensor
MLP = "model.layers.0.mlp.up_proj.weight"


def merge(method, base, models, params=None, model_params=None, name=MLP, seed=0):
    spec = get_method(method)
    g, mp = resolve_params(spec, params or {}, model_params or [{} for _ in models])
    gen = torch.Generator(device=models[0].device).manual_seed(seed)
    return spec.merge(TensorInputs(name, base, models, mp, g, gen))


# ---- sparsifiers ---------------------------------------------------------------------------------------


def test_magnitude_keeps_top_k():
    assert_close(sp.magnitude_(T([1.0, -4.0, 2.0, -3.0]), 0.5), T([0.0, -4.0, 0.0, -3.0]))


def test_magnitude_density_edges():
    x = T([1.0, -4.0, 2.0, -3.0])
    assert_close(sp.magnitude_(x.clone(), 1.0), x)
    assert_close(sp.magnitude_(x.clone(), 1.5), x)
    assert_close(sp.magnitude_(x.clone(), 0.0), torch.zeros(4))
    assert_close(sp.magnitude_(x.clone(), -0.5), torch.zeros(4))
    # int(0.1·4) = 0, but k = max(1, ·) keeps the single largest entry
    assert_close(sp.magnitude_(x.clone(), 0.1), T([0.0, -4.0, 0.0, 0.0]))


def test_magnitude_ties_keep_exactly_k():
    out = sp.magnitude_(T([2.0, 2.0, 2.0, 1.0]), 0.5)
    assert int((out != 0).sum()) == 2
    assert_close(out, T([0.0, 2.0, 2.0, 0.0]))


def test_magnitude_2d_is_per_whole_tensor():
    out = sp.magnitude_(T([[1.0, 9.0], [8.0, 2.0]]), 0.5)
    assert_close(out, T([[0.0, 9.0], [8.0, 0.0]]))


def test_rescale_preserves_l1():
    # kept L1 = 7 of 10 → scaled by 10/7
    out = sp.magnitude_(T([1.0, -4.0, 2.0, -3.0]), 0.5, rescale=True)
    assert_close(out, T([0.0, -40.0 / 7, 0.0, -30.0 / 7]))


def test_rescale_skipped_for_tiny_norms():
    out = sp.magnitude_(T([4e-8, 1e-8, 0.0, 0.0]), 0.25, rescale=True)
    assert_close(out, T([4e-8, 0.0, 0.0, 0.0]), rtol=0, atol=0)


def test_breadcrumbs_index_window():
    # magnitudes 1..10 in shuffled positions; density 0.5, gamma 0.2: n_bot = 10-5-2 = 3 → ranks [3, 8)
    x = T([7.0, -1.0, 10.0, 4.0, -9.0, 2.0, 5.0, -8.0, 3.0, -6.0])
    out = sp.magnitude_outliers_(x.clone(), 0.5, 0.2)
    assert_close(out, T([7.0, 0.0, 0.0, 4.0, 0.0, 0.0, 5.0, -8.0, 0.0, -6.0]))


def test_breadcrumbs_window_when_bottom_would_be_negative():
    # density 0.9, gamma 0.2: target 9, n_top 2 → n_bot = max(0, -1) = 0 → ranks [0, 9): only 10 dropped
    x = T([7.0, -1.0, 10.0, 4.0, -9.0, 2.0, 5.0, -8.0, 3.0, -6.0])
    out = sp.magnitude_outliers_(x.clone(), 0.9, 0.2)
    assert_close(out, T([7.0, -1.0, 0.0, 4.0, -9.0, 2.0, 5.0, -8.0, 3.0, -6.0]))


def test_breadcrumbs_gamma_zero_is_top_k():
    x = T([7.0, -1.0, 10.0, 4.0, -9.0, 2.0, 5.0, -8.0, 3.0, -6.0])
    out = sp.magnitude_outliers_(x.clone(), 0.3, 0.0)
    assert_close(out, T([0.0, 0.0, 10.0, 0.0, -9.0, 0.0, 0.0, -8.0, 0.0, 0.0]))


def test_della_per_row_probabilities():
    rows = T([[0.1, -3.0, 2.0], [5.0, 0.0, -1.0]])
    probs = sp.della_keep_probabilities(rows, 0.5, 0.1)
    # row 0 ranks (ascending |x|): 0.1→0, 2→1, -3→2; r = rank/2
    assert_close(probs, T([[0.4, 0.6, 0.5], [0.6, 0.4, 0.5]]))


def test_della_single_entry_row_uses_density():
    assert_close(sp.della_keep_probabilities(T([[3.0], [1.0]]), 0.3, 0.1), T([[0.3], [0.3]]))


def test_della_favours_large_entries():
    rows = torch.arange(1.0, 1001.0).repeat(200, 1)  # every row: magnitudes ascending
    g = torch.Generator().manual_seed(0)
    kept = sp.della_magprune_(rows.clone(), 0.5, 0.4, g, rescale=False) != 0
    small, large = kept[:, :100].float().mean(), kept[:, -100:].float().mean()
    assert 0.1 < small < 0.2 and 0.8 < large < 0.9  # p ≈ 0.1..0.18 and 0.82..0.9


def test_dare_keeps_about_density_and_rescales_l1():
    x = torch.linspace(-1.0, 1.0, 100_001)
    g = torch.Generator().manual_seed(3)
    out = sp.random_(x.clone(), 0.3, g, rescale=True)
    kept = out != 0
    assert 0.29 < kept.float().mean() < 0.31
    assert_close(out.abs().sum(), x.abs().sum())
    ratio = x.abs().sum() / x[kept].abs().sum()
    assert_close(out[kept], x[kept] * ratio)


# ---- sign election, divisors, weights, λ ---------------------------------------------------------------

TIES_TVS = [T([1.0, -2.0, 0.0, 2.0]), T([-3.0, 1.0, 0.0, 0.0]), T([1.0, -1.0, 0.0, -1.0])]
BASE4 = T([10.0, 10.0, 10.0, 10.0])


def test_ties_sign_election_zeros_and_divisor():
    # sums [-1, -2, 0, 1] → signs [-, -, +, +]; zeros never agree; column 2 has divisor 0 → 1
    models = [BASE4 + tv for tv in TIES_TVS]
    out = merge("ties", BASE4, models, {"weight": 1.0})
    assert_close(out, BASE4 + T([-3.0, -1.5, 0.0, 2.0]))


def test_ties_weights_enter_election_and_divisor():
    models = [BASE4 + tv for tv in TIES_TVS]
    out = merge("ties", BASE4, models, model_params=[{"weight": 1.0}, {"weight": 0.5}, {"weight": 1.0}])
    # weighted sums [0.5, -2.5, 0, 1] → signs [+, -, +, +]
    assert_close(out, BASE4 + T([1.0, -1.5, 0.0, 2.0]))


def test_ties_without_normalize_sums_agreeing():
    models = [BASE4 + tv for tv in TIES_TVS]
    out = merge("ties", BASE4, models, {"weight": 1.0, "normalize": False})
    assert_close(out, BASE4 + T([-3.0, -3.0, 0.0, 2.0]))


def test_ties_trims_before_election():
    # density 0.5 keeps 2 of 4 entries per task vector (equal magnitudes: the later position is kept)
    trimmed = [sp.magnitude_(tv.clone(), 0.5) for tv in TIES_TVS]
    expected = [T([0.0, -2.0, 0.0, 2.0]), T([-3.0, 1.0, 0.0, 0.0]), T([0.0, -1.0, 0.0, -1.0])]
    for got, want in zip(trimmed, expected, strict=True):
        assert_close(got, want)
    # trimmed sums [-3, -2, 0, 1] → signs [-, -, +, +]: col0 τ2 → -3; col1 τ1,τ3 → -1.5; col3 τ1 → 2
    models = [BASE4 + tv for tv in TIES_TVS]
    out = merge("ties", BASE4, models, {"weight": 1.0, "density": 0.5})
    assert_close(out, BASE4 + T([-3.0, -1.5, 0.0, 2.0]))


def test_breadcrumbs_ties_uses_sum_without_normalize():
    models = [BASE4 + tv for tv in TIES_TVS]
    out = merge("breadcrumbs_ties", BASE4, models, {"weight": 1.0})  # density 1 keeps all
    assert_close(out, BASE4 + T([-3.0, -3.0, 0.0, 2.0]))


def test_task_arithmetic_sum_and_normalize():
    base = T([1.0])
    models = [T([5.0]), T([9.0])]  # τ = 4, 8
    mp = [{"weight": 1.0}, {"weight": 3.0}]
    assert_close(merge("task_arithmetic", base, models, model_params=mp), T([1.0 + 28.0]))
    assert_close(merge("task_arithmetic", base, models, {"normalize": True}, mp), T([1.0 + 7.0]))


def test_normalize_divisor_near_zero_becomes_one():
    base = T([1.0])
    models = [T([5.0]), T([9.0])]
    mp = [{"weight": 1.0}, {"weight": -1.0}]
    assert_close(merge("task_arithmetic", base, models, {"normalize": True}, mp), T([1.0 - 4.0]))


def test_lambda_scales_update():
    base = T([1.0, 2.0])
    out = merge("task_arithmetic", base, [T([3.0, 0.0])], {"weight": 1.0, "lambda": 0.5})
    assert_close(out, T([2.0, 1.0]))


def test_della_ties_normalizes_and_rescales_with_density_one():
    # density 1 keeps everything (no draw), so della is TIES with L1 rescale (no-op) and normalize
    models = [BASE4 + tv for tv in TIES_TVS]
    assert_close(merge("della", BASE4, models, {"weight": 1.0}), BASE4 + T([-3.0, -1.5, 0.0, 2.0]))


# ---- properties ----------------------------------------------------------------------------------------

TASK_VECTOR_METHODS = [
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "task_arithmetic_sb",
    "ties_sb",
]


def _random_family(n=3, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", TASK_VECTOR_METHODS)
def test_weight_zero_gives_base(method):
    base, models = _random_family()
    params = {"weight": 0.0}
    if get_method(method).param("density"):
        params["density"] = 0.5
    assert_close(merge(method, base, models, params, name="model.layers.0.self_attn.q_proj.weight"), base)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "breadcrumbs", "della_linear"])
def test_single_checkpoint_lambda_one_gives_it_back(method):
    base, models = _random_family(n=1)
    assert_close(merge(method, base, models, {"weight": 1.0}), models[0])


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_randomized_methods_reproducible_per_seed(method):
    base, models = _random_family(shape=(16, 16))
    params = {"weight": 1.0, "density": 0.5}
    a = merge(method, base, models, params, seed=7)
    b = merge(method, base, models, params, seed=7)
    c = merge(method, base, models, params, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("spec", all_methods(), ids=lambda s: s.name)
def test_inputs_are_not_modified(spec):
    base, models = _random_family()
    models = models[: model_count(spec)]
    if spec.name == "passthrough":  # one input in all: the model, no base
        base = torch.zeros_like(base)
    copies = [base.clone(), *(m.clone() for m in models)]
    params = {"weight": 1.0} if spec.param("weight") else {}
    if spec.param("density"):
        params["density"] = 0.5
    params.update(required_globals(spec))
    g, mp = resolve_params(spec, params, [{}] * len(models))
    for name in (MLP, "model.embed_tokens.weight"):
        given_base = None if spec.name == "passthrough" else base
        out = spec.merge(TensorInputs(name, given_base, models, mp, g, torch.Generator().manual_seed(0)))
        assert out.dtype == torch.float32 and out.shape == base.shape
    for orig, now in zip(copies, [base, *models], strict=True):
        assert torch.equal(orig, now)


def test_linear_without_base():
    models = [T([1.0, 2.0]), T([5.0, 6.0])]
    mp = [{"weight": 1.0}, {"weight": 3.0}]
    assert_close(merge("linear", None, models, model_params=mp), T([4.0, 5.0]))
    assert_close(merge("linear", None, models, {"normalize": False}, mp), T([16.0, 20.0]))
