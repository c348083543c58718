"""A suite prepared once and scored for many models: lm-eval's requests built and tokenized a single time.

A study scores dozens of merges of one base, all with one tokenizer. Plain lm-eval, called once per task,
rebuilds every request (a few-shot context rendered per document), re-tokenizes each one for every model,
and batches forward passes within one task only. Here the suite's tasks are loaded and their requests built
once per (suite, limit) and thread, tokenization is memoised per tokenizer, and each model runs lm-eval's
own `evaluate` over the whole suite in one call, so batches span tasks. Results still go through lm-eval's
filters, `process_results`, aggregation and stderr, unchanged: the numbers equal a per-task
`simple_evaluate` of the same model (tests/evaluation/test_prepared.py).
"""

from __future__ import annotations

import functools
import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from evaluation import shared_prefix
from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.suites import Suite

# simple_evaluate's defaults, applied before each task's requests are built, as it does
_RANDOM_SEED, _OTHER_SEED = 0, 1234
_PREPARED_MAX = 4
# Errors lm-eval and `datasets` raise for unusable task input (missing data, offline Hub, bad YAML).
TASK_ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError, ConnectionError)


class PreparedSuite:
    """The suite's lm-eval tasks with their requests built, ready to be answered by any model."""

    def __init__(self, suite: Suite, limit: int | None) -> None:
        from lm_eval.evaluator_utils import get_sample_size

        self.suite = suite
        self.limit = limit
        self.lock = threading.Lock()
        self.members: dict[str, set[str]] = {}  # suite task -> its leaf tasks and groups
        self.leaves: dict[str, set[str]] = {}
        tasks: dict[str, Any] = {}
        groups: dict[str, Any] = {}
        group_map: dict[str, list[str]] = {}
        from lm_eval.tasks import TaskManager

        manager = suite.task_manager()
        for st in suite.tasks:
            _seed_like_simple_evaluate()
            try:
                # TaskManager.load itself, not the suite manager's per-thread cache: these task objects
                # keep their requests for good, so they must be this suite's own.
                loaded = TaskManager.load(manager, [st.task])
                for obj in loaded["tasks"].values():
                    _configure_shots(obj, st.num_fewshot)
                    obj.build_all_requests(limit=get_sample_size(obj, limit), rank=0, world_size=1)
                    obj.build_all_requests = _keep_requests(obj)
            except TASK_ERRORS as err:
                raise EvaluationError(f"cannot run task {st.task!r}: {_first_line(err)}") from None
            self.leaves[st.task] = set(loaded["tasks"])
            self.members[st.task] = set(loaded["tasks"]) | set(loaded.get("groups", {}))
            tasks.update(loaded["tasks"])
            groups.update(loaded.get("groups", {}))
            group_map.update(loaded.get("group_map", {}))
        self.task_dict = {"tasks": tasks, "groups": groups, "group_map": group_map}
        self.n_requests = sum(len(t.instances) for t in tasks.values())

    def run(self, lm) -> dict[str, Any]:
        """lm-eval's `evaluate` over every task at once; the requests' previous answers are cleared first."""
        from lm_eval.evaluator import evaluate as lm_evaluate

        for task in self.task_dict["tasks"].values():
            for inst in task.instances:
                inst.resps = []
                inst.filtered_resps = {}
        try:
            result = lm_evaluate(
                lm=lm, task_dict=self.task_dict, limit=self.limit, bootstrap_iters=1000, log_samples=False
            )
        except TASK_ERRORS as err:
            raise EvaluationError(f"cannot score suite {self.suite.name!r}: {_first_line(err)}") from None
        if not result or not result.get("results"):
            raise EvaluationError(f"lm-eval returned no results for suite {self.suite.name!r}")
        return result

    def view(self, result: dict[str, Any], task: str) -> dict[str, Any]:
        """The part of a whole-suite result that one per-task simple_evaluate would have returned."""
        keep, leaves = self.members[task], self.leaves[task]
        return {
            "results": {k: v for k, v in result["results"].items() if k in keep},
            "n-samples": {k: v for k, v in (result.get("n-samples") or {}).items() if k in leaves},
        }


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _seed_like_simple_evaluate() -> None:
    import numpy as np
    import torch

    random.seed(_RANDOM_SEED)
    np.random.seed(_OTHER_SEED)
    torch.manual_seed(_OTHER_SEED)


def _configure_shots(task, num_fewshot: int | None) -> None:
    """simple_evaluate's rule: an explicit shot count overrides the task's unless the task pins 0; no count
    and no default means 0; the few-shot sampler is seeded either way."""
    default = task.get_config("num_fewshot")
    if num_fewshot is not None:
        if default != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif default is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=_OTHER_SEED)


def _keep_requests(task) -> Callable[..., None]:
    """Stands in for `task.build_all_requests` after the first build: the instances stay as they are."""

    def build_all_requests(**_: Any) -> None:
        return None

    return build_all_requests


_prepared: OrderedDict[tuple, PreparedSuite] = OrderedDict()
_prepared_lock = threading.Lock()


def prepared_suite(suite: Suite, limit: int | None) -> PreparedSuite:
    """The prepared suite for (suite, limit) on this thread, built on first use; a few are kept (LRU).

    Per thread because lm-eval keeps a run's answers on the request objects."""
    key = (
        threading.get_ident(),
        suite.name,
        suite.version,
        tuple(suite.task_names),
        str(suite.include_path),
        limit,
    )
    with _prepared_lock:
        hit = _prepared.get(key)
        if hit is not None:
            _prepared.move_to_end(key)
            return hit
    built = PreparedSuite(suite, limit)
    with _prepared_lock:
        _prepared[key] = built
        while len(_prepared) > _PREPARED_MAX:
            _prepared.popitem(last=False)
    return built


# --- the model side ------------------------------------------------------------------------------------
_token_memos: dict[str, dict] = {}
_token_memos_lock = threading.Lock()


def tokenizer_key(tokenizer) -> str:
    """Identity of a tokenizer's behaviour (its full serialisation), so equal tokenizers share a memo."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((type(tokenizer).__name__, getattr(tokenizer, "add_bos_token", None), tokenizer.bos_token))
    return hashlib.sha1((text + extra).encode()).hexdigest()


def _memo_for(tokenizer) -> dict:
    key = tokenizer_key(tokenizer)
    with _token_memos_lock:
        if len(_token_memos) > 8 and key not in _token_memos:
            _token_memos.clear()
        return _token_memos.setdefault(key, {})


@functools.cache
def _reusing_hflm_class():
    from lm_eval.models.huggingface import HFLM

    class ReusingHFLM(HFLM):
        """HFLM with tokenization memoised across models that share a tokenizer, and a cancel check before
        every forward pass. Everything else, batching and log-probabilities included, is lm-eval's."""

        def __init__(self, *args, token_memo: dict, should_cancel: Callable[[], bool] | None, **kwargs):
            super().__init__(*args, **kwargs)
            self._token_memo = token_memo
            self._should_cancel = should_cancel

        def tok_encode(self, string, left_truncate_len=None, add_special_tokens=None):
            key = (string, left_truncate_len, add_special_tokens)
            hit = self._token_memo.get(key)
            if hit is None:
                # the first model of a suite tokenizes every request: seconds on a large task
                if self._should_cancel is not None and self._should_cancel():
                    raise EvaluationCancelled("scoring cancelled")
                hit = super().tok_encode(string, left_truncate_len, add_special_tokens)
                self._token_memo[key] = hit
            return list(hit)

        def loglikelihood(self, requests, disable_tqdm: bool = True):
            """Without lm-eval's per-call progress bars: jobs and studies report one line of their own."""
            return super().loglikelihood(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            """Each distinct context run once for all its continuations (evaluation/shared_prefix.py) where
            that applies; otherwise lm-eval's own loop."""
            if override_bs is None and shared_prefix.applies(self, requests):
                return shared_prefix.loglikelihoods(self, requests, self._should_cancel)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        def _model_call(self, inps, attn_mask=None, labels=None):
            if self._should_cancel is not None and self._should_cancel():
                raise EvaluationCancelled("scoring cancelled")
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

        def _model_generate(self, *args, **kwargs):
            if self._should_cancel is not None and self._should_cancel():
                raise EvaluationCancelled("scoring cancelled")
            return super()._model_generate(*args, **kwargs)

    return ReusingHFLM


def wrap_model(model, tokenizer, batch_size: int, should_cancel: Callable[[], bool] | None = None):
    """lm-eval's HFLM around an in-memory model, reusing tokenization done for any earlier model."""
    cls = _reusing_hflm_class()
    return cls(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_batch_size=max(64, batch_size if isinstance(batch_size, int) else 64),
        token_memo=_memo_for(tokenizer),
        should_cancel=should_cancel,
    )
