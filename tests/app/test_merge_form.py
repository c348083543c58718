"""The Merge page's form: generated from the method's spec, validates through merging, imports and
exports mergekit YAML, and submits a good recipe as a job."""

import pytest
import yaml

from tests.app.conftest import app_test, errors_of

pytestmark = pytest.mark.slow


def _by_label(widgets, label):
    return next(w for w in widgets if w.label == label)


def test_task_arithmetic_form_fields_and_yaml_preview(populated_home):
    at = app_test(populated_home, "merge")
    assert errors_of(at) == []
    assert at.selectbox(key="merge:method").value == "task_arithmetic"
    assert len(at.multiselect(key="merge:checkpoints").value) == 3
    labels = [n.label for n in at.number_input]
    assert "weight (every checkpoint)" in labels and "lambda" in labels
    text = next(c.value for c in at.code if "merge_method" in c.value)
    doc = yaml.safe_load(text)
    assert doc["merge_method"] == "task_arithmetic"
    assert doc["parameters"]["weight"] == 1.0
    assert len(doc["models"]) == 3


def test_out_of_range_density_is_refused_with_a_message(populated_home):
    at = app_test(populated_home, "merge")
    at.selectbox(key="merge:method").set_value("ties").run()
    at.number_input(key="merge:ties:density").set_value(1.5).run()
    messages = errors_of(at)
    assert len(messages) == 1 and "density" in messages[0]
    assert _by_label(at.button, "Launch merge").disabled


def test_per_checkpoint_override_reaches_the_recipe(populated_home):
    at = app_test(populated_home, "merge")
    first = at.multiselect(key="merge:checkpoints").value[0]
    at.number_input(key=f"merge:task_arithmetic:{first}:weight").set_value(0.5).run()
    doc = yaml.safe_load(next(c.value for c in at.code if "merge_method" in c.value))
    assert doc["models"][0]["parameters"] == {"weight": 0.5}
    assert "parameters" not in doc["models"][1]


def test_paper_values_button_sets_ties_density(populated_home):
    at = app_test(populated_home, "merge")
    at.selectbox(key="merge:method").set_value("ties").run()
    assert at.number_input(key="merge:ties:density").value == 1.0
    _by_label(at.button, "Use the paper's values").click().run()
    assert at.number_input(key="merge:ties:density").value == pytest.approx(0.1)


def test_yaml_import_prefills_the_form(populated_home):
    at = app_test(populated_home, "merge")
    cks = at.multiselect(key="merge:checkpoints").value[:2]
    base = at.selectbox(key="merge:base").value
    text = yaml.safe_dump(
        {
            "merge_method": "ties",
            "base_model": base,
            "models": [{"model": cks[0], "parameters": {"density": 0.3}}, {"model": cks[1]}],
            "parameters": {"weight": 1.0, "lambda": 0.8},
        }
    )
    at.text_area(key="merge:yaml_in").set_value(text).run()
    _by_label(at.button, "Load recipe").click().run()
    assert at.selectbox(key="merge:method").value == "ties"
    assert at.multiselect(key="merge:checkpoints").value == cks
    assert at.number_input(key="merge:ties:lambda").value == pytest.approx(0.8)
    assert at.number_input(key=f"merge:ties:{cks[0]}:density").value == pytest.approx(0.3)


def test_broken_yaml_import_is_an_error_message(populated_home):
    at = app_test(populated_home, "merge")
    at.text_area(key="merge:yaml_in").set_value("merge_method: [unclosed").run()
    _by_label(at.button, "Load recipe").click().run()
    assert any("YAML" in m for m in errors_of(at))
    assert not at.exception


def test_launch_submits_a_merge_job(registered_home):
    at = app_test(registered_home, "merge")
    at.checkbox(key="merge:evaluate").set_value(False).run()
    at.checkbox(key="merge:save").set_value(True).run()
    _by_label(at.button, "Launch merge").click().run()
    assert errors_of(at) == []
    assert any("Launched job" in s.value for s in at.success)
    job_id = at.session_state["merge:last_job"]
    from ui.session import get_runner

    job = get_runner().get(job_id)
    assert job.kind == "merge"
    recipe = yaml.safe_load(job.params["recipe_yaml"])
    assert recipe["merge_method"] == "task_arithmetic" and len(recipe["models"]) == 3
    assert job.params["output"].startswith(str(registered_home / "merges"))
    (done,) = get_runner().wait([job_id], timeout=120)
    assert done.status == "done", done.error


def test_method_list_offers_the_mergekit_family_with_one_line_explanations(populated_home):
    at = app_test(populated_home, "merge")
    box = at.selectbox(key="merge:method")
    for name in (
        "slerp",
        "nuslerp",
        "multislerp",
        "karcher",
        "sce",
        "nearswap",
        "arcee_fusion",
        "passthrough",
    ):
        assert name in box.options or any(f"({name}):" in o for o in box.options), name
    box.set_value("slerp").run()
    assert any("Takes exactly 1 checkpoint and a base model" in m.value for m in at.markdown)
    assert at.number_input(key="merge:slerp:t") is not None
    # three checkpoints are chosen by default: slerp takes one, and says so
    assert any("takes exactly 1 checkpoint; 3 chosen" in m for m in errors_of(at))
    at.multiselect(key="merge:checkpoints").set_value(at.multiselect(key="merge:checkpoints").value[:1]).run()
    at.number_input(key="merge:slerp:t").set_value(0.4).run()
    assert errors_of(at) == []
    doc = yaml.safe_load(next(c.value for c in at.code if "merge_method" in c.value))
    assert doc["merge_method"] == "slerp" and doc["parameters"] == {"t": 0.4} and len(doc["models"]) == 1


def test_study_offers_only_methods_that_take_any_number_of_models(populated_home):
    at = app_test(populated_home, "study")
    options = at.multiselect(key="study:methods").options
    assert not {"SLERP", "Passthrough"} & set(options)
    assert "Multi-SLERP" in options and "TA (sum)" in options and "TA (mean)" in options


def _preview(at) -> dict:
    return yaml.safe_load(next(c.value for c in at.code if "merge_method" in c.value))


def _import(at, doc: dict) -> None:
    at.text_area(key="merge:yaml_in").set_value(yaml.safe_dump(doc, sort_keys=False)).run()
    _by_label(at.button, "Load recipe").click().run()


def test_gradients_filters_and_mergekit_keys_import_and_preview_back(populated_home):
    at = app_test(populated_home, "merge")
    cks = at.multiselect(key="merge:checkpoints").value[:2]
    base = at.selectbox(key="merge:base").value
    doc = {
        "models": [
            {"model": base},
            {"model": cks[0], "parameters": {"weight": [0.0, 0.5, 1.0]}},
            {
                "model": cks[1],
                "parameters": {
                    "weight": [
                        {"filter": "self_attn", "value": 0.7},
                        {"filter": "mlp", "value": [0.2, 0.4]},
                        {"value": 0.5},
                    ]
                },
            },
        ],
        "merge_method": "task_arithmetic",
        "base_model": base,
        "parameters": {"lambda": 0.9, "int8_mask": True},
        "dtype": "bfloat16",
        "tokenizer_source": "base",
        "chat_template": "chatml",
        "name": "imported",
    }
    _import(at, doc)
    assert errors_of(at) == []
    assert at.session_state[f"merge:task_arithmetic:{cks[0]}:weight:form"] == "gradient"
    assert at.session_state[f"merge:task_arithmetic:{cks[1]}:weight:form"] == "filters"
    back = _preview(at)
    assert back == doc
    assert not _by_label(at.button, "Launch merge").disabled


def test_frankenmerge_slices_import_and_preview_back(populated_home):
    at = app_test(populated_home, "merge")
    cks = at.multiselect(key="merge:checkpoints").value[:2]
    doc = {
        "slices": [
            {"sources": [{"model": cks[0], "layer_range": [0, 2], "parameters": {"weight": 1.0}}]},
            {"sources": [{"model": cks[1], "layer_range": [1, 2], "parameters": {"weight": 1.0}}]},
        ],
        "merge_method": "linear",
        "dtype": "float32",
    }
    _import(at, doc)
    assert errors_of(at) == []
    assert _preview(at) == doc
    assert any("3 layers" in c.value for c in at.caption)


def test_slerp_with_layer_range_under_models_previews_back(populated_home):
    """A model-card slerp: the base listed with a layer_range under models: (inert in mergekit), t filters."""
    at = app_test(populated_home, "merge")
    cks = at.multiselect(key="merge:checkpoints").value[:1]
    base = at.selectbox(key="merge:base").value
    doc = {
        "models": [{"model": base, "layer_range": [0, 2]}, {"model": cks[0], "layer_range": [0, 2]}],
        "merge_method": "slerp",
        "base_model": base,
        "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.5}]},
        "dtype": "bfloat16",
    }
    _import(at, doc)
    assert errors_of(at) == []
    assert _preview(at) == doc


def test_merge_page_shows_the_estimate_and_takes_a_memory_budget(populated_home):
    at = app_test(populated_home, "merge")
    assert any("estimate on" in c.value and "peak memory about" in c.value for c in at.caption)
    at.number_input(key="merge:max_memory").set_value(0.001).run()  # 1 MiB: below what a tensor needs
    assert errors_of(at) == []
    assert any("cannot fit: memory budget" in w.value for w in at.warning)
