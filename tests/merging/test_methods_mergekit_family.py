"""mergekit's other methods (methods.md §6): slerp, nuslerp, multislerp, karcher, sce, nearswap, arcee_fusion,
passthrough, against tensors computed by hand (or, for arcee_fusion's 2-D case, by an independent numpy
transcription of the formula), plus the edge cases: t at 0 and 1, identical and (anti)parallel inputs,
iteration limits, and wrong model counts refused with one clear line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from merging import DirectorySink, ModelEntry, Recipe, open_checkpoint, run_merge
from merging.budget import BASE_OVERHEAD, plan_blocks
from merging.errors import RecipeError
from merging.methods import TensorInputs, all_methods, get_method, resolve_params
from merging.methods.base import ModelsFromTaskVectors
from merging.methods.spherical import slerp_vectors
from merging.planner import plan_recipe, validate_recipe
from tests.merging.helpers import weights

T = torch.tensor
S2 = math.sqrt(2) / 2
NAME = "model.layers.0.mlp.up_proj.weight"


def merge(method, base, models, params=None, model_params=None, as_engine=True):
    """Run one method on one tensor; with a base, hand it task vectors the way the engine does."""
    spec = get_method(method)
    g, mp = resolve_params(spec, params or {}, model_params or [{} for _ in models])
    if base is not None and as_engine and models:
        tv = torch.stack(models).sub_(base)
        return spec.merge(TensorInputs(NAME, base, ModelsFromTaskVectors(base, tv), mp, g, None, tv))
    return spec.merge(TensorInputs(NAME, base, list(models), mp, g, None))


# ---- slerp ---------------------------------------------------------------------------------------------


def test_slerp_quarter_turn_midpoint_keeps_each_norm():
    # θ = π/2: s0 = s1 = sin(π/4) / sin(π/2) = √2/2, applied to the raw (unnormalised) tensors
    out = merge("slerp", T([2.0, 0.0]), [T([0.0, 3.0])], {"t": 0.5})
    assert_close(out, T([2 * S2, 3 * S2]))


def test_slerp_endpoints_are_the_two_models():
    a, b = T([[0.3, -1.0], [2.0, 0.5]]), T([[1.0, 0.2], [-0.4, 0.9]])
    assert_close(merge("slerp", a, [b], {"t": 0.0}), a)
    assert_close(merge("slerp", a, [b], {"t": 1.0}), b)


def test_slerp_rotates_unit_vectors_by_the_fraction_of_the_angle():
    phi = math.acos(0.999)  # just under the 0.9995 threshold: still spherical
    a, b = T([1.0, 0.0]), T([math.cos(phi), math.sin(phi)])
    out = merge("slerp", a, [b], {"t": 0.25})
    assert_close(out, T([math.cos(phi / 4), math.sin(phi / 4)]))


def test_slerp_near_parallel_falls_back_to_linear_interpolation():
    a, b = T([1.0, 2.0]), T([2.0, 4.001])  # cos θ ≈ 0.99999996 > 0.9995
    assert_close(merge("slerp", a, [b], {"t": 0.25}), 0.75 * a + 0.25 * b)


def test_slerp_antiparallel_is_linear_too():
    assert_close(merge("slerp", T([1.0, 0.0]), [T([-3.0, 0.0])], {"t": 0.5}), T([-1.0, 0.0]))


def test_slerp_identical_inputs_give_the_input():
    a = T([[0.5, -0.25], [1.5, 2.0]])
    assert_close(merge("slerp", a, [a.clone()], {"t": 0.7}), a)


def test_slerp_zero_base_counts_as_orthogonal():
    # mergekit leaves a zero vector unnormalised, so cos θ = 0 and the quarter-turn weights apply
    out = merge("slerp", T([0.0, 0.0]), [T([1.0, 1.0])], {"t": 0.5})
    assert_close(out, T([S2, S2]))


def test_slerp_refuses_two_models_and_a_missing_base():
    with pytest.raises(RecipeError, match="slerp takes the base and exactly 1 other model"):
        merge("slerp", T([1.0]), [T([2.0]), T([3.0])], {"t": 0.5})
    with pytest.raises(RecipeError, match="slerp needs a base model"):
        merge("slerp", None, [T([2.0])], {"t": 0.5})
    with pytest.raises(RecipeError, match="'t'"):
        resolve_params(get_method("slerp"), {}, [{}])


def test_recipe_with_the_wrong_model_count_is_refused_before_merging():
    recipe = Recipe("slerp", "base", [ModelEntry("a"), ModelEntry("b")], {"t": 0.5})
    with pytest.raises(
        RecipeError, match=r"slerp takes exactly 1 checkpoint besides the base model; the recipe has 2"
    ):
        validate_recipe(recipe)
    with pytest.raises(RecipeError, match=r"nuslerp takes exactly 2 checkpoints"):
        validate_recipe(Recipe("nuslerp", None, [ModelEntry("a", {"weight": 1.0})]))


# ---- nuslerp -------------------------------------------------------------------------------------------


def test_nuslerp_weights_set_the_arc_position():
    # t = w2 / (w1 + w2) = 0.75 on a quarter turn: angle 3π/8 from the first
    out = merge("nuslerp", None, [T([1.0, 0.0]), T([0.0, 1.0])], {}, [{"weight": 1.0}, {"weight": 3.0}])
    assert_close(out, T([math.cos(3 * math.pi / 8), math.sin(3 * math.pi / 8)]))


def test_nuslerp_cancelling_weights_take_the_midpoint():
    out = merge("nuslerp", None, [T([1.0, 0.0]), T([0.0, 1.0])], {}, [{"weight": 1.0}, {"weight": -1.0}])
    assert_close(out, T([S2, S2]))


def test_nuslerp_with_a_base_interpolates_task_vectors():
    base = T([1.0, 1.0])
    out = merge("nuslerp", base, [T([2.0, 1.0]), T([1.0, 2.0])], {}, [{"weight": 1.0}, {"weight": 1.0}])
    assert_close(out, T([1 + S2, 1 + S2]))


def test_nuslerp_row_by_row_each_row_its_own_arc():
    v0, v1 = T([[1.0, 0.0], [1.0, 0.0]]), T([[0.0, 1.0], [2.0, 0.0]])
    w = [{"weight": 1.0}, {"weight": 1.0}]
    rows = merge("nuslerp", None, [v0, v1], {"nuslerp_flatten": False}, w)
    # row 0 a quarter turn; row 1 parallel (cos = 1) so linear: (1 + 2) / 2
    assert_close(rows, T([[S2, S2], [1.5, 0.0]]))
    # flattened, the 4-vectors meet at cos θ = 2 / (√2·√5), so every entry differs from the row-wise result
    theta = math.acos(2 / (math.sqrt(2) * math.sqrt(5)))
    c = math.sin(theta / 2) / math.sin(theta)
    flat = merge("nuslerp", None, [v0, v1], {}, w)
    assert_close(flat, (v0 + v1) * c)


def test_nuslerp_row_wise_interpolates_columns():
    v0, v1 = T([[1.0, 1.0], [0.0, 0.0]]), T([[0.0, 2.0], [1.0, 0.0]])
    out = merge(
        "nuslerp",
        None,
        [v0, v1],
        {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        [{"weight": 1.0}, {"weight": 1.0}],
    )
    # column 0: [1,0] → [0,1], a quarter turn; column 1: [1,0] → [2,0], parallel, linear
    assert_close(out, T([[S2, 1.5], [S2, 0.0]]))


def test_nuslerp_refuses_other_model_counts():
    with pytest.raises(RecipeError, match="nuslerp takes exactly 2 models"):
        merge("nuslerp", None, [T([1.0]), T([2.0]), T([3.0])], {}, [{"weight": 1.0}] * 3)


# ---- multislerp ----------------------------------------------------------------------------------------


def test_multislerp_two_orthogonal_models_scaled_to_the_weighted_norm():
    out = merge("multislerp", None, [T([2.0, 0.0]), T([0.0, 4.0])], {}, [{"weight": 1.0}, {"weight": 1.0}])
    assert_close(out, T([3 * S2, 3 * S2]))  # direction of the midpoint, norm (2 + 4) / 2


def test_multislerp_three_axes_meet_on_the_diagonal():
    eye = torch.eye(3)
    out = merge("multislerp", None, list(eye), {}, [{"weight": 1.0}] * 3)
    assert_close(out, torch.full((3,), 1 / math.sqrt(3)))


def test_multislerp_unnormalised_weights_scale_the_norm():
    out = merge(
        "multislerp",
        None,
        [T([1.0, 0.0]), T([0.0, 1.0])],
        {"normalize_weights": False},
        [{"weight": 1.0}, {"weight": 1.0}],
    )
    assert_close(out, T([2 * S2, 2 * S2]))


def test_multislerp_with_a_base_works_on_task_vectors():
    base = T([1.0, -1.0])
    out = merge(
        "multislerp",
        base,
        [base + T([2.0, 0.0]), base + T([0.0, 4.0])],
        {},
        [{"weight": 1.0}, {"weight": 1.0}],
    )
    assert_close(out, base + T([3 * S2, 3 * S2]))


def test_multislerp_antipodal_pair_falls_back_to_the_weighted_sum_and_three_cancelling_refuse():
    out = merge("multislerp", None, [T([1.0, 0.0]), T([-1.0, 0.0])], {}, [{"weight": 1.0}, {"weight": 1.0}])
    assert_close(out, T([0.0, 0.0]))
    with pytest.raises(RecipeError, match="cancel out"):
        merge(
            "multislerp",
            None,
            [T([1.0, 0.0]), T([-1.0, 0.0]), T([0.0, 0.0])],
            {},
            [{"weight": 1.0}] * 3,
        )


def test_multislerp_single_model_is_that_model():
    assert_close(merge("multislerp", None, [T([0.5, 2.0])], {}, [{"weight": 3.0}]), T([0.5, 2.0]))


# ---- karcher -------------------------------------------------------------------------------------------


def _angle(v: torch.Tensor) -> float:
    return math.atan2(float(v[1]), float(v[0]))


def test_karcher_two_points_meet_at_the_arc_midpoint_with_the_mean_norm():
    out = merge("karcher", None, [T([2.0, 0.0]), T([0.0, 4.0])])
    assert_close(out, T([3 * S2, 3 * S2]))


def test_karcher_iteration_limit():
    # On a circle the Karcher mean is the mean angle: (0 + 0 + π/2) / 3 = π/6. The start (Euclidean mean
    # direction) is atan(1/2); one fixed-point step reaches π/6 exactly.
    pts = [T([1.0, 0.0]), T([1.0, 0.0]), T([0.0, 1.0])]
    start = merge("karcher", None, pts, {"max_iter": 0})
    assert _angle(start) == pytest.approx(math.atan(0.5), abs=1e-6)
    assert float(start.norm()) == pytest.approx(1.0, abs=1e-6)
    one = merge("karcher", None, pts, {"max_iter": 1})
    assert _angle(one) == pytest.approx(math.pi / 6, abs=1e-6)
    # tol above the first step's length (π/6 − atan(1/2) ≈ 0.060) stops before moving
    loose = merge("karcher", None, pts, {"tol": 0.1})
    assert _angle(loose) == pytest.approx(math.atan(0.5), abs=1e-6)


def test_karcher_counts_a_base_as_one_more_input():
    out = merge("karcher", T([0.0, 1.0]), [T([1.0, 0.0]), T([1.0, 0.0])])
    assert _angle(out) == pytest.approx(math.pi / 6, abs=1e-6)


def test_karcher_zero_vectors_count_only_in_the_norm():
    out = merge("karcher", None, [T([1.0, 0.0]), T([0.0, 1.0]), T([0.0, 0.0])])
    assert_close(out, T([S2, S2]) * (2 / 3))
    assert_close(merge("karcher", None, [torch.zeros(3), torch.zeros(3)]), torch.zeros(3))


def test_karcher_identical_inputs_give_the_input():
    a = T([[0.2, -1.0], [3.0, 0.5]])
    assert_close(merge("karcher", None, [a, a.clone(), a.clone()]), a)


# ---- sce -----------------------------------------------------------------------------------------------

TV1, TV2 = T([1.0, 2.0, -1.0, 0.0]), T([3.0, -2.0, -1.0, 0.0])
BASE4 = T([0.5, 0.5, 0.5, 0.5])


def test_sce_energy_weights_and_sign_election():
    # weights: mean squares 6/4 and 14/4 → 0.3 and 0.7. Signs elected from the sums [4, 0, −2, 0] → + + − +.
    # entry 0: (0.3·1 + 0.7·3) / 1; entry 1: only τ1 agrees → 2; entry 2: both → −1; entry 3: nothing → 0
    out = merge("sce", BASE4, [BASE4 + TV1, BASE4 + TV2])
    assert_close(out, BASE4 + T([2.4, 2.0, -1.0, 0.0]))


def test_sce_selects_the_highest_variance_entries():
    # variances [1, 4, 0, 0]: two are non-zero, int(2·0.5) = 1 entry kept (entry 1); then equal weights
    out = merge("sce", BASE4, [BASE4 + TV1, BASE4 + TV2], {"select_topk": 0.5})
    assert_close(out, BASE4 + T([0.0, 2.0, 0.0, 0.0]))
    assert_close(merge("sce", BASE4, [BASE4 + TV1, BASE4 + TV2], {"select_topk": 0.0}), BASE4)


def test_sce_tiny_task_vectors_weigh_equally():
    # Σ mean squares = 5e-8 < 1e-6, so both weigh 1/2: entry 0 → (1e-4 + 3e-4) / 2
    base = torch.zeros(4)
    out = merge("sce", base, [TV1 * 1e-4, TV2 * 1e-4])
    assert_close(out, T([2e-4, 2e-4, -1e-4, 0.0]))


def test_sce_needs_a_base():
    with pytest.raises(RecipeError, match="sce needs a base model"):
        merge("sce", None, [TV1, TV2])


# ---- nearswap ------------------------------------------------------------------------------------------


def test_nearswap_moves_near_entries_fully_and_far_ones_by_t_over_distance():
    base = T([0.0, 0.0, 0.0, 1.0])
    other = T([0.05, 1.0, -0.2, 1.0])
    # |diff| = [0.05, 1, 0.2, 0] → weights min(1, 0.1/|diff|) = [1, 0.1, 0.5, 1]
    out = merge("nearswap", base, [other], {"t": 0.1})
    assert_close(out, T([0.05, 0.1, -0.1, 1.0]))
    assert_close(merge("nearswap", base, [other], {"t": 0.0}), base)


def test_nearswap_refuses_two_models():
    with pytest.raises(RecipeError, match="nearswap takes the base and exactly 1 other model"):
        merge("nearswap", T([0.0]), [T([1.0]), T([2.0])], {"t": 0.1})


# ---- arcee_fusion --------------------------------------------------------------------------------------


def test_arcee_fusion_keeps_only_outlier_changes():
    # A vector has one KL factor, so importance ∝ |τ|. Sorted |τ| = [.01 .01 .01 .02 .02 .02 .03 2]; the
    # quantiles sit at positions floor(q·7) = 1, 3, 5 → .01, .02, .02; threshold .02 + 1.5·.01 = .035.
    base = torch.zeros(8)
    other = T([0.01, 0.02, 0.01, 0.03, 0.02, 0.01, 0.02, 2.0])
    out = merge("arcee_fusion", base, [other])
    assert_close(out, T([0.0] * 7 + [2.0]))


def _numpy_fusion(base: np.ndarray, other: np.ndarray) -> np.ndarray:
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(other) + 1e-8, softmax(base) + 1e-8
    kl = (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    imp = np.abs(other - base) * kl
    s = np.sort(imp.reshape(-1))
    n = s.size
    q1, med, q3 = (s[int(np.float32(q) * np.float32(n - 1))] for q in (0.25, 0.5, 0.75))
    return base + (other - base) * (imp >= med + 1.5 * (q3 - q1))


def test_arcee_fusion_matrix_uses_a_kl_per_row():
    g = np.random.default_rng(3)
    base = g.normal(0, 1, (6, 5))
    other = base + g.normal(0, 0.3, (6, 5)) * g.integers(0, 2, (6, 5))
    want = _numpy_fusion(base, other)
    out = merge("arcee_fusion", torch.from_numpy(base), [torch.from_numpy(other)], as_engine=False)
    assert_close(out, torch.from_numpy(want))
    assert 0 < int((want != base).sum()) < int((other != base).sum())  # some changes taken, not all


def test_arcee_fusion_identical_models_give_the_base():
    a = T([[0.1, 0.2], [0.3, 0.4]])
    assert_close(merge("arcee_fusion", a, [a.clone()]), a)


# ---- passthrough ---------------------------------------------------------------------------------------


def test_passthrough_copies_and_scales():
    x = T([[1.0, -2.0], [0.5, 4.0]])
    assert_close(merge("passthrough", None, [x]), x)
    assert_close(merge("passthrough", None, [x], {}, [{"scale": 0.5}]), x * 0.5)
    assert_close(merge("passthrough", x, []), x)  # a slice whose only source is the base


def test_passthrough_takes_one_input_only():
    x = T([1.0])
    with pytest.raises(RecipeError, match="passthrough takes exactly 1 input"):
        merge("passthrough", None, [x, x])
    with pytest.raises(RecipeError, match="a base model counts as one"):
        merge("passthrough", x, [x])


# ---- registry: counts, explanations, row-block separability ----------------------------------------------


def test_every_method_declares_counts_an_explanation_and_blockwise():
    for spec in all_methods():
        assert spec.summary and "\n" not in spec.summary, spec.name
        assert isinstance(spec.blockwise, bool), spec.name
        assert spec.max_models is None or spec.max_models >= spec.min_models, spec.name
    assert get_method("slerp").max_models == 1 and get_method("nuslerp").min_models == 2
    assert get_method("passthrough").models_needed() == "exactly 1 checkpoint"


BLOCK_CASES = [
    (spec.name, params, per_model)
    for spec in all_methods()
    for params, per_model in [
        ({}, {"weight": 0.7, "t": 0.3}),
        ({"filter_wise": True, "nuslerp_flatten": False}, {}),
    ]
    if spec.is_blockwise({**{p.name: p.default for p in spec.params if not p.per_model}, **params})
]


@pytest.mark.parametrize(("method", "params", "per_model"), BLOCK_CASES)
def test_blockwise_methods_give_the_same_rows_when_merged_in_row_blocks(method, params, per_model):
    spec = get_method(method)
    names = {p.name for p in spec.params}
    gparams = {k: v for k, v in {"t": 0.3, **params}.items() if k in names and not spec.param(k).per_model}
    mparams = {k: v for k, v in per_model.items() if k in names and spec.param(k).per_model}
    if "weight" in names and spec.param("weight").per_model:
        mparams.setdefault("weight", 0.7)
    n = spec.max_models or max(spec.min_models, 2)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g) if spec.needs_base or method != "passthrough" else None
    models = [torch.randn(6, 5, generator=g) for _ in range(n)]
    whole = merge(method, base, models, gparams, [dict(mparams) for _ in models])
    top = merge(
        method, None if base is None else base[:2], [m[:2] for m in models], gparams, [dict(mparams)] * n
    )
    rest = merge(
        method, None if base is None else base[2:], [m[2:] for m in models], gparams, [dict(mparams)] * n
    )
    assert_close(torch.cat([top, rest]), whole)


def test_blockwise_cases_cover_the_parameter_dependent_methods():
    covered = {m for m, _, _ in BLOCK_CASES}
    assert {"linear", "task_arithmetic", "nearswap", "passthrough", "model_stock", "nuslerp"} <= covered
    assert not get_method("nuslerp").is_blockwise({"nuslerp_flatten": True, "nuslerp_row_wise": False})
    assert not get_method("slerp").is_blockwise({"t": 0.5})


# ---- whole merges through the engine (tiny Llama family) ---------------------------------------------------


def _merged(tmp_path, yaml_text: str, name: str) -> dict[str, torch.Tensor]:
    run_merge(Recipe.from_yaml(yaml_text), DirectorySink(tmp_path / name), device="cpu")
    return weights(tmp_path / name)


def test_lazymergekit_slerp_lists_the_base_among_the_models(tiny_llama_family, tmp_path):
    base, cks = tiny_llama_family
    out = _merged(
        tmp_path,
        f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {cks[0]}\n"
        "parameters:\n  t: 0.35\ndtype: float32\n",
        "slerp",
    )
    a, b = weights(base), weights(cks[0])
    for name, got in out.items():
        assert_close(got, slerp_vectors(0.35, a[name].float(), b[name].float()), rtol=1e-6, atol=1e-7)


def test_karcher_counts_a_listed_base_once_and_an_unlisted_one_too(tiny_llama_family, tmp_path):
    base, cks = tiny_llama_family
    listed = _merged(
        tmp_path,
        f"merge_method: karcher\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {cks[0]}\n"
        f"  - model: {cks[1]}\n",
        "listed",
    )
    unlisted = _merged(
        tmp_path,
        f"merge_method: karcher\nbase_model: {base}\nmodels:\n  - model: {cks[0]}\n  - model: {cks[1]}\n",
        "unlisted",
    )
    plain = _merged(
        tmp_path,
        f"merge_method: karcher\nmodels:\n  - model: {base}\n  - model: {cks[0]}\n  - model: {cks[1]}\n",
        "plain",
    )
    for name in plain:  # the same three inputs each time
        assert_close(listed[name], plain[name], rtol=1e-5, atol=1e-6)
        assert_close(unlisted[name], plain[name], rtol=1e-5, atol=1e-6)


def test_passthrough_of_the_listed_base_copies_it(tiny_llama_family, tmp_path):
    base, _ = tiny_llama_family
    out = _merged(
        tmp_path, f"merge_method: passthrough\nbase_model: {base}\nmodels:\n  - model: {base}\n", "p"
    )
    want = weights(base)
    assert out.keys() == want.keys() and all(torch.equal(out[k], want[k]) for k in out)


BLOCKED = {
    "slerp": ("parameters:\n  t: 0.35\n", 1, True),
    "nuslerp": ("", 2, True),
    "nuslerp_rows": ("parameters:\n  nuslerp_flatten: false\n", 2, True),
    "nearswap": ("parameters:\n  t: 0.01\n", 1, True),
    "multislerp": ("", 3, True),
    "passthrough": ("", 1, False),
}


@pytest.mark.parametrize("case", list(BLOCKED))
def test_blocked_merge_equals_the_whole_one_bit_for_bit(tmp_path, tiny_llama_family, case):
    """Under a small memory budget the embeddings and head are merged in row blocks: same bytes."""
    base, cks = tiny_llama_family
    params, n, with_base = BLOCKED[case]
    method = case.removesuffix("_rows")
    weight = "\n    parameters:\n      weight: 1.0" if method in ("nuslerp", "multislerp") else ""
    models = "".join(f"  - model: {c}{weight}\n" for c in cks[:n])
    text = f"merge_method: {method}\n" + (f"base_model: {base}\n" if with_base else "")
    text += f"models:\n{models}{params}"
    recipe = Recipe.from_yaml(text)
    spec, _, _ = validate_recipe(recipe)
    planned = plan_recipe(recipe, spec, open_checkpoint)
    cut = plan_blocks(planned.plan, spec, BASE_OVERHEAD + 12_000)
    planned.cleanup()
    assert sum(len(t.row_blocks) > 1 for t in cut.tensors) >= 10  # most tensors really are cut
    whole = weights(run_merge(recipe, DirectorySink(tmp_path / "whole"), device="cpu").output_path)
    result = run_merge(
        recipe, DirectorySink(tmp_path / "blocked"), device="cpu", max_memory=BASE_OVERHEAD + 12_000
    )
    blocked = weights(result.output_path)
    assert blocked.keys() == whole.keys()
    for name in whole:
        assert torch.equal(blocked[name], whole[name]), name
