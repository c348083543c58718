"""Suites: what they contain, how their version moves, and the clear errors for bad specs."""

from __future__ import annotations

import pytest
import yaml

from evaluation import EvaluationError, get_suite
from evaluation.suites import PAPER16, declared_metrics


def test_zoo_suite_reads_the_zoo_task_folder(zoo_root, eval_home):
    suite = get_suite("zoo", zoo_root=zoo_root)
    assert suite.name == "zoo"
    assert suite.task_names == ["zoo_add", "zoo_letters"]
    assert all(t.metric == "acc" and t.local for t in suite.tasks)
    # lm-eval gets shims that include the user's YAML and name the data file by absolute path
    shim = yaml.safe_load((suite.include_path / "zoo_add.yaml").read_text())
    assert shim["include"] == str((zoo_root / "tasks" / "zoo_add.yaml").resolve())
    assert shim["dataset_kwargs"]["data_files"]["test"] == str(
        (zoo_root / "tasks" / "zoo_add.jsonl").resolve()
    )
    assert suite.include_path.is_relative_to(eval_home / "cache" / "tasks")


def test_suite_version_is_a_content_hash(zoo_root):
    first = get_suite("zoo", zoo_root=zoo_root)
    assert get_suite("zoo", zoo_root=zoo_root).version == first.version
    data = zoo_root / "tasks" / "zoo_letters.jsonl"
    data.write_text(data.read_text().replace('"gold": 0', '"gold": 3', 1))
    changed = get_suite("zoo", zoo_root=zoo_root)
    assert changed.version != first.version
    assert changed.include_path != first.include_path


def test_folder_path_spec_and_default_zoo_root(zoo_root, eval_home):
    by_path = get_suite(str(zoo_root / "tasks"))
    assert by_path.task_names == ["zoo_add", "zoo_letters"]
    (eval_home / "zoo").symlink_to(zoo_root, target_is_directory=True)
    assert get_suite("zoo").task_names == by_path.task_names


def test_paper16_metrics_and_quick_limit():
    suite = get_suite("paper16")
    assert len(suite.tasks) == 16 and suite.default_limit is None
    metrics = {t.task: t.metric for t in suite.tasks}
    assert metrics["leaderboard_bbh"] == metrics["leaderboard_gpqa"] == "acc_norm"
    assert sum(m == "acc" for m in metrics.values()) == 14
    assert all(t.num_fewshot is None for t in suite.tasks)  # lm-eval's default shots
    assert [t for t, _ in PAPER16][:2] == ["arc_easy", "arc_challenge"]
    quick = get_suite("quick")
    assert quick.default_limit == 100 and set(quick.task_names) <= set(metrics)
    assert quick.version != suite.version


def test_declared_metrics_read_stored_scores_without_lm_evals_index(zoo_root, eval_home, tmp_path):
    paper = declared_metrics("paper16")
    assert paper == {t.task: t.metric for t in get_suite("paper16").tasks}
    assert paper["leaderboard_gpqa"] == "acc_norm" and paper["arc_easy"] == "acc"
    assert declared_metrics("quick") == {t: paper[t] for t in get_suite("quick").task_names}
    # a task list: the paper's benchmarks are known, any other task is left to the caller
    assert declared_metrics("leaderboard_bbh, some_other_task") == {"leaderboard_bbh": "acc_norm"}
    assert declared_metrics(str(zoo_root / "tasks")) == {"zoo_add": "acc", "zoo_letters": "acc"}
    assert declared_metrics("zoo") == {}  # no zoo in this workspace: nothing to tell, not an error
    assert declared_metrics(str(tmp_path / "gone")) == {}


def test_missing_task_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="zoo task folder .* not found; build the zoo"):
        get_suite("zoo", zoo_root=tmp_path / "nowhere")
    with pytest.raises(EvaluationError, match="task folder .*missing-dir not found"):
        get_suite(str(tmp_path / "missing-dir"))


def test_empty_suites_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="defines no tasks"):
        get_suite(str(tmp_path / "empty"))
    for spec in ("", " , ,"):
        with pytest.raises(EvaluationError, match="suite is empty"):
            get_suite(spec)


def test_task_naming_a_missing_data_file(zoo_root):
    (zoo_root / "tasks" / "zoo_add.jsonl").unlink()
    with pytest.raises(EvaluationError, match=r"names data file .*zoo_add.jsonl, which is missing"):
        get_suite("zoo", zoo_root=zoo_root)


@pytest.mark.slow
def test_unknown_lm_eval_task_is_a_clear_error():
    """Builds lm-eval's full task index (~15k entries), hence slow."""
    with pytest.raises(EvaluationError, match=r"unknown lm-eval task 'arc_easyy' \(did you mean arc_easy"):
        get_suite("arc_easy,arc_easyy")
    suite = get_suite("arc_easy, headqa")
    assert [(t.task, t.metric) for t in suite.tasks] == [("arc_easy", "acc"), ("headqa", "acc")]
