"""Method registry metadata and resolve_params: defaults, precedence and every refusal (one-line messages)."""

from __future__ import annotations

import pytest

from merging.errors import RecipeError
from merging.methods import all_methods, get_method, resolve_params

ORDER = [
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "tsvm",
    "iso_c",
    "iso_cts",
    "task_arithmetic_sb",
    "ties_sb",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
    "nearswap",
    "arcee_fusion",
    "passthrough",
]


def refusal(spec_name, params, model_params, names=None) -> str:
    with pytest.raises(RecipeError) as err:
        resolve_params(get_method(spec_name), params, model_params, names)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ---- registry ------------------------------------------------------------------------------------------


def test_registration_order():
    assert [m.name for m in all_methods()] == ORDER


def test_unknown_method_lists_known_ones():
    with pytest.raises(RecipeError, match="'frankenslerp'") as err:
        get_method("frankenslerp")
    assert all(name in str(err.value) for name in ORDER)


def test_metadata():
    for m in all_methods():
        assert m.title and m.summary and "arXiv:" in m.reference
        assert all(p.help for p in m.params)
        assert m.needs_base == (m.name not in {"linear", "nuslerp", "multislerp", "karcher", "passthrough"})
    assert get_method("model_stock").min_models == 2
    assert {m.name for m in all_methods() if m.randomized} == {
        "dare_linear",
        "dare_ties",
        "della",
        "della_linear",
    }
    assert get_method("ties").title == "TIES-Merging"


def test_parameter_sets():
    names = {m.name: [p.name for p in m.params] for m in all_methods()}
    assert names["linear"] == ["weight", "normalize"]
    assert names["task_arithmetic"] == ["weight", "lambda", "normalize", "rescale"]
    assert names["ties"] == ["weight", "density", "lambda", "normalize", "rescale"]
    assert names["breadcrumbs"] == ["weight", "density", "gamma", "lambda", "normalize", "rescale"]
    assert names["della_linear"] == ["weight", "density", "epsilon", "lambda", "normalize", "rescale"]
    assert names["model_stock"] == ["filter_wise"]
    assert names["tsvm"] == names["iso_c"] == ["lambda"]
    assert names["iso_cts"] == ["lambda", "common_space_fraction"]
    assert names["ties_sb"] == names["ties"] + ["svd_thresh", "cumsum"]
    assert names["task_arithmetic_sb"] == names["task_arithmetic"] + ["svd_thresh", "cumsum"]


@pytest.mark.parametrize(
    ("method", "normalize", "rescale"),
    [
        ("task_arithmetic", False, False),
        ("ties", True, False),
        ("dare_linear", False, True),
        ("dare_ties", False, True),
        ("breadcrumbs", False, False),
        ("breadcrumbs_ties", False, False),
        ("della", True, True),
        ("della_linear", False, True),
    ],
)
def test_task_vector_defaults(method, normalize, rescale):
    g, mp = resolve_params(get_method(method), {"weight": 1}, [{}])
    assert g == {"lambda": 1.0, "normalize": normalize, "rescale": rescale}
    extra = {"breadcrumbs": {"gamma": 0.01}, "della": {"epsilon": 0.15}}
    expected = {"weight": 1.0}
    if method != "task_arithmetic":
        expected["density"] = 1.0
    expected.update(extra.get(method.replace("_ties", "").replace("_linear", ""), {}))
    assert mp == [expected]


def test_paper_values():
    ta, ties, sb = get_method("task_arithmetic"), get_method("ties"), get_method("ties_sb")
    assert ta.param("weight").paper_value == 1.0 and ta.param("lambda").paper_value == 1.0
    assert ties.param("density").paper_value == 0.1 and ties.param("lambda").paper_value == 1.0
    assert sb.param("svd_thresh").paper_value == 0.2
    assert get_method("tsvm").param("lambda").paper_value == 1.0
    assert get_method("iso_c").param("lambda").paper_value == 1.0
    assert get_method("iso_cts").param("common_space_fraction").default == 0.8


# ---- resolution ----------------------------------------------------------------------------------------


def test_global_per_model_value_is_default_and_model_value_wins():
    g, mp = resolve_params(get_method("ties"), {"weight": 0.5, "density": 0.2}, [{}, {"density": 0.7}])
    assert mp == [{"weight": 0.5, "density": 0.2}, {"weight": 0.5, "density": 0.7}]
    assert g["normalize"] is True


def test_ints_accepted_for_floats():
    g, mp = resolve_params(get_method("ties"), {"lambda": 2}, [{"weight": 1}])
    assert g["lambda"] == 2.0 and isinstance(g["lambda"], float)
    assert isinstance(mp[0]["weight"], float)


def test_resolve_without_models():
    g, mp = resolve_params(get_method("iso_cts"), {}, [])
    assert g == {"lambda": 1.0, "common_space_fraction": 0.8} and mp == []


# ---- refusals ------------------------------------------------------------------------------------------


def test_unknown_global_parameter():
    msg = refusal("ties", {"weight": 1.0, "densty": 0.5}, [{}])
    assert "ties" in msg and "'densty'" in msg and "weight, density, lambda, normalize, rescale" in msg


def test_unknown_model_parameter():
    msg = refusal("task_arithmetic", {}, [{"weight": 1.0}, {"weight": 1.0, "density": 0.5}])
    assert "task_arithmetic" in msg and "'density'" in msg and "model 2" in msg and "weight, lambda" in msg


def test_global_only_parameter_in_model_section():
    msg = refusal("ties", {}, [{"weight": 1.0, "lambda": 0.5}])
    assert "'lambda'" in msg and "global" in msg and "model 1" in msg


@pytest.mark.parametrize("value", ["0.5", None, True])
def test_wrong_type_for_float(value):
    msg = refusal("ties", {"weight": 1.0, "density": value}, [{}])
    assert "'density'" in msg and "number" in msg


@pytest.mark.parametrize("value", [1, 0, "true", 1.0])
def test_bools_must_be_bools(value):
    msg = refusal("ties", {"weight": 1.0, "normalize": value}, [{}])
    assert "'normalize'" in msg and "true or false" in msg


@pytest.mark.parametrize("value", [[0.1, 0.5, 1.0], {"filter": "mlp", "value": 0.5}])
def test_gradients_and_filters_refused(value):
    msg = refusal("ties", {"weight": 1.0}, [{"density": value}])
    assert "scalar" in msg and "'density'" in msg and "model 1" in msg


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_refused(value):
    assert "finite" in refusal("task_arithmetic", {"weight": value}, [{}])


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("ties", {"weight": 1.0, "density": 1.5}, "1.5"),
        ("ties", {"weight": 1.0, "density": -0.1}, "-0.1"),
        ("breadcrumbs", {"weight": 1.0, "gamma": 2}, "2"),
        ("ties_sb", {"weight": 1.0, "svd_thresh": 1.2}, "1.2"),
        ("iso_cts", {"common_space_fraction": -1}, "-1"),
    ],
)
def test_out_of_range(method, params, needle):
    msg = refusal(method, params, [{}])
    assert needle in msg and "range" in msg


def test_required_missing_names_the_model():
    msg = refusal("task_arithmetic", {}, [{"weight": 1.0}, {}], names=["org/a", "org/b"])
    assert "model 2 (org/b)" in msg and "'weight'" in msg


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_density_epsilon_refused_per_model(method):
    msg = refusal(method, {"weight": 1.0, "density": 0.5}, [{}, {"density": 0.1}])
    assert method in msg and "model 2" in msg and "density=0.1" in msg and "epsilon=0.15" in msg
    assert "model 1" in refusal(method, {"weight": 1.0, "density": 0.9}, [{}])
    # density 1 (the default) draws nothing, so the default epsilon is fine; so is density 0.5 ± 0.15
    resolve_params(get_method(method), {"weight": 1.0}, [{}])
    resolve_params(get_method(method), {"weight": 1.0, "density": 0.5}, [{}])


def test_linear_weights_summing_to_zero_refused():
    msg = refusal("linear", {}, [{"weight": 1.0}, {"weight": -1.0}])
    assert "sum to 0" in msg
    resolve_params(get_method("linear"), {"normalize": False}, [{"weight": 1.0}, {"weight": -1.0}])
