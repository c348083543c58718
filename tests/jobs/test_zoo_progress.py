"""The zoo build's progress line says which model of how many is training and how long is left."""

import time

import zoo
from jobs.kinds import zoo_progress_message


def test_the_build_plans_26_models_base_first():
    models = zoo.planned_models()
    assert len(models) == 26 and models[0] == "zoo-llama" and models[13] == "zoo-qwen3"
    assert zoo.planned_models(["qwen3"]) == models[13:]


def test_progress_line_counts_models_and_extrapolates_time_left():
    models = zoo.planned_models()
    started = time.perf_counter() - 60.0  # 60 s for 100 of 1000 steps: 540 s left
    line = zoo_progress_message("zoo-llama-max-specialist", models, 100, 1000, started)
    assert line == "zoo-llama-max-specialist · model 5 of 26 · about 9 min left"
    assert zoo_progress_message("zoo-qwen3", models, 990, 1000, started).endswith("about 1 s left")
    assert zoo_progress_message("done", models, 1000, 1000, started) == "done"
