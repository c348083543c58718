"""The study protocol's pure parts: subset sampling, sizes, configurations, recipes, identity."""

import math

import pytest

from jobs import PAPER_CONFIGS, JobError, define_study, sample_subsets
from jobs.study import (
    DEFAULT_CONFIG_NAMES,
    DEFAULT_SIZES,
    DEFAULT_SUBSETS,
    build_recipe,
    normalize_sizes,
    resolve_configs,
)

POOL = [f"c{i:02d}" for i in range(12)]


def test_paper_sampling_counts_and_distinctness():
    subsets = sample_subsets(POOL, [2, 4, 6, 8, 10, 12], 15, seed=0)
    by_n = {}
    for n, sid, cks in subsets:
        by_n.setdefault(n, []).append((sid, tuple(cks)))
        assert len(cks) == n and len(set(cks)) == n
        assert cks == sorted(cks, key=POOL.index)  # pool order inside a subset
    assert {n: len(v) for n, v in by_n.items()} == {2: 15, 4: 15, 6: 15, 8: 15, 10: 15, 12: 1}
    for items in by_n.values():
        assert len({cks for _, cks in items}) == len(items)
    assert by_n[12] == [("n12-00", tuple(POOL))]
    assert len(subsets) == 5 * 15 + 1  # paper.md §1.3: 76 merges per method


def test_sampling_is_seeded_and_takes_all_when_few_exist():
    assert sample_subsets(POOL, [4], 5, seed=3) == sample_subsets(POOL, [4], 5, seed=3)
    assert sample_subsets(POOL, [4], 5, seed=3) != sample_subsets(POOL, [4], 5, seed=4)
    few = sample_subsets(["a", "b", "c"], [2], 15, seed=0)
    assert [cks for _, _, cks in few] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert len(sample_subsets(POOL, [11], 15, 0)) == 12 == math.comb(12, 11)


def test_sizes_default_and_checks():
    assert normalize_sizes(None, 12) == [2, 4, 6, 8, 10, 12]
    assert normalize_sizes(None, 5) == [2, 4, 5]
    assert normalize_sizes(["2", "all"], 3) == [2, 3]
    with pytest.raises(JobError, match="outside 2..3"):
        normalize_sizes([4], 3)
    with pytest.raises(JobError, match="at least 2"):
        normalize_sizes(None, 1)


def test_default_configurations_are_the_papers_seven_with_both_ta_readings():
    configs = resolve_configs(None)
    assert [c.name for c in configs] == [
        "TA (sum)",
        "TA (mean)",
        "TIES",
        "Model Stock",
        "TA+SB",
        "TIES+SB",
        "TSV-M",
        "Iso-C",
    ]
    assert configs == list(PAPER_CONFIGS) and tuple(c.name for c in configs) == DEFAULT_CONFIG_NAMES
    ta_sum, ta_mean = configs[0], configs[1]
    assert ta_sum.method == ta_mean.method == "task_arithmetic"
    assert ta_sum.params == {"weight": 1.0, "lambda": 1.0}  # Eq. 2 literally: a sum (normalize off)
    assert ta_mean.params == {"weight": 1.0, "lambda": 1.0, "normalize": True}
    assert dict(PAPER_CONFIGS[2].params)["density"] == 0.1 and PAPER_CONFIGS[5].params["svd_thresh"] == 0.2
    other = resolve_configs(["dare_linear"])[0]
    assert other.method == "dare_linear" and other.params.get("weight") == 1.0
    with pytest.raises(JobError, match="Unknown study method 'tie'"):
        resolve_configs(["tie"])


def test_registry_names_stand_for_their_paper_configuration():
    picked = resolve_configs(["task_arithmetic", "TA (mean)", "ties"])
    assert [c.name for c in picked] == ["TA (sum)", "TA (mean)", "TIES"]
    with pytest.raises(JobError, match="distinct names"):
        resolve_configs(["task_arithmetic", "TA (sum)"])


def test_ta_readings_merge_as_a_sum_and_as_a_mean():
    """The two labels really are different merges: on hand-made deltas the sum is n times the mean."""
    import torch

    from merging import get_method, resolve_params
    from merging.methods import TensorInputs

    base = torch.zeros(2, 2)
    deltas = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[3.0, 0.0], [1.0, -2.0]])]
    out = {}
    for config in resolve_configs(["TA (sum)", "TA (mean)"]):
        spec = get_method(config.method)
        recipe = build_recipe(config, "B", ["c1", "c2"], seed=0)
        gp, mp = resolve_params(spec, recipe.parameters, [m.parameters for m in recipe.models])
        models = [base + d for d in deltas]
        out[config.name] = spec.merge(
            TensorInputs(name="w", base=base, models=models, model_params=mp, params=gp)
        )
    assert torch.equal(out["TA (sum)"], torch.tensor([[4.0, 2.0], [4.0, 2.0]]))
    assert torch.equal(out["TA (mean)"], torch.tensor([[2.0, 1.0], [2.0, 1.0]]))


def test_the_app_reads_the_study_defaults_from_one_place():
    from ui import launch

    assert tuple(launch.PAPER_METHODS) == DEFAULT_CONFIG_NAMES
    assert launch.PAPER_SUBSETS == DEFAULT_SUBSETS == 15
    assert DEFAULT_SIZES == (2, 4, 6, 8, 10, 12)
    assert launch.study_sizes(12) == normalize_sizes(None, 12) == [2, 4, 6, 8, 10, 12]
    assert launch.study_sizes(7) == normalize_sizes(None, 7) == [2, 4, 6, 7]
    choices = launch.study_method_choices(["task_arithmetic", "ties", "dare_linear", "slerp"])
    assert choices == [*DEFAULT_CONFIG_NAMES, "dare_linear"]  # slerp takes one checkpoint, not subsets


def test_recipe_puts_per_model_params_on_each_model():
    ties = next(c for c in PAPER_CONFIGS if c.name == "TIES")
    recipe = build_recipe(ties, "B", ["c1", "c2"], seed=7)
    assert recipe.merge_method == "ties" and recipe.base_model == "B" and recipe.seed == 7
    assert [m.parameters for m in recipe.models] == [{"weight": 1.0, "density": 0.1}] * 2
    assert recipe.parameters == {"lambda": 1.0}


def test_study_identity_ignores_name_but_not_definition():
    a = define_study(base="B", pool=POOL[:4], sizes=[2], subsets=3, seed=1, suite="zoo", name="first")
    b = define_study(base="B", pool=POOL[:4], sizes=[2], subsets=3, seed=1, suite="zoo", name="second")
    c = define_study(base="B", pool=POOL[:4], sizes=[2], subsets=3, seed=2, suite="zoo")
    assert a.study_id == b.study_id != c.study_id
    with pytest.raises(JobError, match="twice"):
        define_study(base="B", pool=["x", "x"], suite="zoo")


def test_a_method_with_a_fixed_model_count_is_refused_for_larger_subsets():
    with pytest.raises(JobError, match=r"slerp takes exactly 1 checkpoint, so it cannot merge subsets of 2"):
        define_study(base="base", pool=["a", "b", "c"], methods=["slerp"], sizes=[2, 3])
