"""Store-to-chart adapters on hand-written frames shaped like the store's."""

import json

import pandas as pd
import pytest

from ui import charts, data, launch


def test_task_scores_picks_one_metric_per_task_and_averages():
    rows = pd.DataFrame(
        {
            "fingerprint": ["a", "a", "a", "b", "b"],
            "model_name": ["A", "A", "A", "B", "B"],
            "task": ["t1", "t1", "t2", "t1", "t2"],
            "metric": ["acc_norm", "acc", "acc", "acc", "acc"],
            "value": [0.9, 0.5, 0.7, 0.2, 0.4],
        }
    )
    scores = data.task_scores(rows)
    assert set(scores["metric"]) == {"acc"}
    avg = data.average_scores(scores).set_index("fingerprint")["average"]
    assert avg["a"] == pytest.approx(60.0) and avg["b"] == pytest.approx(30.0)  # percentage points
    assert data.best_checkpoint(data.average_scores(scores), ["b"]) == ("b", pytest.approx(30.0))
    assert data.best_checkpoint(data.average_scores(scores), ["zzz"]) is None


def test_layer_norms_combine_tensors_of_a_layer_in_quadrature():
    stats = pd.DataFrame(
        {
            "tensor": ["model.embed_tokens.weight", "model.layers.0.q.weight", "model.layers.0.k.weight"],
            "layer": [pd.NA, 0, 0],
            "kind": ["embed", "attn", "attn"],
            "task_norms": [[1.0, 2.0], [3.0, 0.0], [4.0, 1.0]],
        }
    )
    df = data.layer_norms(stats, ["ft0", "ft1"]).set_index(["model", "layer"])["norm"]
    assert df[("ft0", "layer 00")] == pytest.approx(5.0)  # sqrt(3² + 4²)
    assert df[("ft1", "layer 00")] == pytest.approx(1.0)
    assert df[("ft1", "embed")] == pytest.approx(2.0)


def test_sign_conflicts_weighted_by_tensor_size():
    stats = pd.DataFrame(
        {
            "tensor": ["model.layers.0.a", "model.layers.0.b", "model.norm.weight"],
            "layer": [0, 0, pd.NA],
            "kind": ["mlp", "mlp", "norm"],
            "numel": [300, 100, 10],
            "sign_conflict": [0.1, 0.5, None],
        }
    )
    out = data.sign_conflicts(stats)
    assert list(out["layer"]) == ["layer 00"]
    assert out["rate"].iloc[0] == pytest.approx((300 * 0.1 + 100 * 0.5) / 400)


def test_parse_cosines_from_matrix_json():
    raw = json.dumps([[1.0, 0.25, -0.5], [0.25, 1.0, 0.0], [-0.5, 0.0, 1.0]])
    pairs = data.parse_cosines(raw, ["x", "y", "z"])
    assert pairs.to_dict("records") == [
        {"a": "x", "b": "y", "cosine": 0.25},
        {"a": "x", "b": "z", "cosine": -0.5},
        {"a": "y", "b": "z", "cosine": 0.0},
    ]
    assert data.parse_cosines("null", ["x"]).empty


def test_spectra_long_names_sources_after_checkpoints():
    spectra = pd.DataFrame(
        {
            "tensor": ["w", "w", "w", "v"],
            "source": ["task", "task", "delta", "task"],
            "idx": [0, 1, -1, 0],
            "singular_values": [[2.0, 1.0], [3.0], [4.0, 0.5], [9.0]],
            "effective_rank": [1.9, 1.0, 1.5, 1.0],
        }
    )
    out = data.spectra_long(spectra, "w", ["ft0", "ft1"])
    assert list(out["source"]) == ["τ ft0", "τ ft0", "τ ft1", "merged Δ", "merged Δ"]
    assert list(out["value"]) == [2.0, 1.0, 3.0, 4.0, 0.5]
    # the effective rank the merge recorded travels with the values (not recomputed by the UI)
    assert list(out["effective_rank"]) == [1.9, 1.9, 1.0, 1.5, 1.5]
    legend = [t.name for t in charts.spectra_chart(out).data]
    assert "τ ft0 (eff. rank 1.9)" in legend


def test_short_names():
    assert data.short_name("/a/b/llama-ft1/") == "llama-ft1"
    assert data.short_name("owner/model") == "owner/model"


def test_default_spectra_pick_first_middle_last_layers():
    names = [
        f"model.layers.{i}.{k}.weight"
        for i in range(5)
        for k in ("mlp.down_proj", "self_attn.q_proj", "mlp.up_proj")
    ]
    picked = launch.default_spectra(names)
    assert picked == [
        f"model.layers.{i}.{k}.weight" for i in (0, 2, 4) for k in ("mlp.down_proj", "self_attn.q_proj")
    ]


def test_study_and_merge_submissions_refuse_impossible_requests():
    with pytest.raises(ValueError, match="exceed the pool"):
        launch.submit_study(
            None,
            name="s",
            base="b",
            pool=["a", "b"],
            methods=["ties"],
            sizes=[4],
            subsets_per_size=1,
            seed=0,
            suite="zoo",
            limit=None,
        )
    with pytest.raises(ValueError, match="at least one"):
        launch.submit_merge(None, None, save=False, suite=None)


def test_depth_order_puts_embedding_first_and_head_last():
    labels = ["head", "layer 10", "norm", "layer 02", "embed"]
    assert sorted(labels, key=data.depth_key) == ["embed", "layer 02", "layer 10", "norm", "head"]


def test_job_descriptions_name_what_the_job_works_on():
    from ui.jobs_view import describe_job

    recipe = "models:\n- model: /a\n- model: /b\nmerge_method: ties\n"
    assert (
        describe_job("merge+evaluate", {"recipe_yaml": recipe, "suite": "zoo"})
        == "ties of 2 checkpoint(s), scored on zoo"
    )
    assert describe_job("evaluate", {"model": "/m/x", "model_name": "x", "suite": "zoo"}) == "x on suite zoo"


def test_sweep_and_analysis_jobs_are_described_with_their_result():
    from ui.jobs_view import describe_job, headline

    sweep = {
        "sweep": {"method": "task_arithmetic", "param": "lambda", "values": [0.2, 1.0, 2.0]},
        "sizes": [4],
        "subsets": 2,
        "suite": "zoo",
    }
    assert (
        describe_job("sweep", sweep) == "lambda of task_arithmetic at 0.2, 1, 2: 2 subsets of n=4, suite zoo"
    )
    assert headline("sweep", {"ran": 23, "skipped": 0, "total": 23}) == "23 units run, 0 reused, 23 in all"
    analysis = {"base": "/zoo/models/zoo-llama", "checkpoints": ["a", "b", "c"]}
    assert describe_job("analyse", analysis) == "3 checkpoints against zoo-llama"
    result = {"sign_conflict": 0.556, "most_conflicting": ["layer 00", "layer 01", "head"]}
    assert headline("analyse", result) == "sign conflict 55.6%, most in layer 00, layer 01"


def test_distance_per_merge_labels_by_configuration_and_leaves_out_unrecorded_distances():
    merges = pd.DataFrame(
        {"id": ["m1", "m2", "m3"], "method": ["ties", "task_arithmetic", "ties"], "n": [2, 4, 3]}
        | {"config": [None, "TA (sum)", "TIES"]}
    )
    stats = pd.DataFrame({"merge_id": ["m2", "m1", "m3"], "model_delta_norm": [2.5, 1.5, None]})
    got = data.distance_per_merge(merges, stats)
    assert got.to_dict("records") == [
        {"method": "ties", "n": 2, "distance": 1.5},
        {"method": "TA (sum)", "n": 4, "distance": 2.5},
    ]


def test_bases_and_the_checkpoints_that_can_merge_with_one():
    registered = pd.DataFrame(
        {
            "ref": ["b-llama", "b-qwen", "ck1", "ck2", "ck3"],
            "kind": ["base", "base", "checkpoint", "checkpoint", "checkpoint"],
            "architecture": ["Llama", "Qwen3", "Llama", "Qwen3", "Llama"],
        }
    )
    assert data.base_refs(registered) == ["b-llama", "b-qwen"]
    assert data.base_refs(registered.iloc[:0]) == []
    assert data.mergeable_checkpoints(registered, "b-llama") == ["ck1", "ck3"]
    assert data.mergeable_checkpoints(registered, "b-qwen") == ["ck2"]
