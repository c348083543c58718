"""Scoring stops within one lm-eval batch of a cancel request, and nothing is cached for it."""

import threading
import time

import pytest

from evaluation import DirectoryScoreCache, EvaluationCancelled, evaluate, get_suite, load_model
from tests.tiny_models import make_base
from tests.tiny_tasks import tiny_rows, write_task_folder


@pytest.fixture
def long_suite(tmp_path):
    root = write_task_folder(tmp_path / "zoo", {"add": tiny_rows("add", operands=(40, 40))})  # 1600 items
    return get_suite("zoo", zoo_root=root)


def test_cancel_mid_task_stops_within_seconds(tmp_path, long_suite):
    loaded = load_model(make_base(tmp_path / "base"), device="cpu")
    cancel = threading.Event()
    batches, stopped = [], {}

    def should_cancel() -> bool:
        batches.append(time.monotonic())
        if len(batches) == 3:  # scoring is under way: ask it to stop now
            cancel.set()
            stopped["asked"] = time.monotonic()
        return cancel.is_set()

    cache = DirectoryScoreCache(tmp_path / "cache")
    with pytest.raises(EvaluationCancelled):
        evaluate(
            loaded.model,
            loaded.tokenizer,
            long_suite,
            fingerprint="fp",
            model_name="tiny",
            batch_size=4,
            cache=cache,
            should_cancel=should_cancel,
        )
    assert time.monotonic() - stopped["asked"] < 5
    assert len(batches) == 3  # no batch or tokenization ran after the request
    assert cache.get("fp", long_suite.version, None) is None


def test_cancel_before_scoring_runs_nothing(tmp_path, long_suite):
    loaded = load_model(make_base(tmp_path / "base"), device="cpu")
    with pytest.raises(EvaluationCancelled, match="before task"):
        evaluate(
            loaded.model,
            loaded.tokenizer,
            long_suite,
            fingerprint="fp",
            model_name="m",
            should_cancel=lambda: True,
        )
