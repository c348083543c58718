"""The prepared-suite path (requests built and tokenized once, one lm-eval call per model) scores exactly like
plain lm-eval run task by task, keeps models apart, and stops when cancelled."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from evaluation import EvaluationCancelled, evaluate, get_suite, load_model
from evaluation.harness import _extract
from evaluation.prepared import prepared_suite
from tests.tiny_models import make_base, make_finetune


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    base = make_base(root / "base", seed=5)
    return [
        base,
        make_finetune(base, root / "ft-a", seed=11, scale=0.6),
        make_finetune(base, root / "ft-b", seed=12),
    ]


def _plain_lm_eval(loaded, suite, limit, batch):
    """What a user gets from lm-eval itself: one simple_evaluate per task, HFLM around the same model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch)
    rows = []
    for task in suite.tasks:
        result = simple_evaluate(
            model=lm,
            tasks=[task.task],
            num_fewshot=task.num_fewshot,
            limit=limit,
            task_manager=suite.task_manager(),
            log_samples=False,
            bootstrap_iters=1000,
        )
        rows.append((task.task, *_extract(result, task.task, task.metric)))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, 5])
def test_equal_to_plain_lm_eval_for_every_model(models, zoo_root, limit):
    suite = get_suite("zoo", zoo_root=zoo_root)
    for ref in [*models, models[0]]:  # the base again after two others: no answers carried over
        loaded = load_model(ref)
        ours = evaluate(
            loaded.model, loaded.tokenizer, suite, fingerprint="x", model_name="m", batch_size=8, limit=limit
        )
        assert [(r.task, r.value, r.stderr, r.n) for r in ours] == _plain_lm_eval(loaded, suite, limit, 8)


def test_requests_are_built_once_per_suite_and_limit(models, zoo_root):
    suite = get_suite("zoo", zoo_root=zoo_root)
    first = prepared_suite(suite, 4)
    assert prepared_suite(suite, 4) is first
    assert prepared_suite(suite, 3) is not first
    assert first.n_requests == sum(len(t.instances) for t in first.task_dict["tasks"].values()) > 0


def test_different_models_get_their_own_scores(models, zoo_root):
    suite = get_suite("zoo", zoo_root=zoo_root)
    base = load_model(models[0])
    rows_base = evaluate(base.model, base.tokenizer, suite, fingerprint="b", model_name="b", batch_size=8)
    with torch.no_grad():  # a very different model through the same prepared requests
        for p in base.model.parameters():
            p.copy_(torch.randn_like(p) * 3)
    rows_noise = evaluate(base.model, base.tokenizer, suite, fingerprint="n", model_name="n", batch_size=8)
    assert [r.value for r in rows_base] != [r.value for r in rows_noise]


def test_cancel_stops_scoring_before_the_next_forward_pass(models, zoo_root):
    suite = get_suite("zoo", zoo_root=zoo_root)
    loaded = load_model(models[1])
    calls = []

    def should_cancel():
        calls.append(time.monotonic())
        return len(calls) > 2

    with pytest.raises(EvaluationCancelled):
        evaluate(
            loaded.model,
            loaded.tokenizer,
            suite,
            fingerprint="c",
            model_name="c",
            batch_size=1,
            should_cancel=should_cancel,
        )
    assert len(calls) == 3
    # the prepared requests are still usable after a cancel
    again = evaluate(loaded.model, loaded.tokenizer, suite, fingerprint="c", model_name="c", batch_size=8)
    assert all(r.n > 0 for r in again)


def test_threads_keep_their_own_prepared_requests(models, zoo_root):
    suite = get_suite("zoo", zoo_root=zoo_root)
    got = {}

    def run(name):
        got[name] = prepared_suite(suite, 2)

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["a"] is not got["b"]
