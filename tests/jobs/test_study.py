"""The study protocol's pure parts: subset sampling, sizes, configurations, recipes, identity."""

import math

import pytest

from jobs import PAPER_CONFIGS, JobError, define_study, sample_subsets
from jobs.study import build_recipe, normalize_sizes, resolve_configs

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


def test_default_configurations_are_the_papers_seven():
    configs = resolve_configs(None)
    assert [c.name for c in configs] == [
        "task_arithmetic",
        "ties",
        "model_stock",
        "task_arithmetic_sb",
        "ties_sb",
        "tsvm",
        "iso_c",
    ]
    assert configs == list(PAPER_CONFIGS)
    assert dict(PAPER_CONFIGS[1].params)["density"] == 0.1 and PAPER_CONFIGS[4].params["svd_thresh"] == 0.2
    other = resolve_configs(["dare_linear"])[0]
    assert other.method == "dare_linear" and other.params.get("weight") == 1.0
    with pytest.raises(JobError, match="Unknown study method 'tie'"):
        resolve_configs(["tie"])


def test_recipe_puts_per_model_params_on_each_model():
    ties = next(c for c in PAPER_CONFIGS if c.name == "ties")
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
