"""Scoring: in memory equals from disk, the numbers are the model's own log-likelihood choices, the cache is
keyed by (fingerprint, suite version, limit), and a resident model is reused across merges."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from evaluation import (
    DirectoryScoreCache,
    EvaluationError,
    ResidentModel,
    aggregate,
    evaluate,
    get_suite,
    load_model,
)
from tests.tiny_models import make_base, make_finetune


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-family")
    base = make_base(root / "base", seed=3)
    ft = make_finetune(base, root / "ft", seed=7, scale=0.5)
    return base, ft


def _score(model, tokenizer, suite, fp, **kw):
    return evaluate(model, tokenizer, suite, fingerprint=fp, model_name="m", batch_size=4, **kw)


def _expected_acc(model, tokenizer, rows) -> float:
    """Independent of lm-eval: pick the choice with the highest summed log-probability of ' ' + choice."""
    hits = 0
    for row in rows:
        ctx = tokenizer(row["query"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in row["choices"]:
            cont = tokenizer(row["query"] + " " + choice, add_special_tokens=False)["input_ids"][len(ctx) :]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            scores.append(logp[torch.arange(len(targets)), targets][-len(cont) :].sum().item())
        hits += int(max(range(len(scores)), key=scores.__getitem__) == row["gold"])
    return hits / len(rows)


@pytest.mark.slow
def test_in_memory_equals_saved_directory(family, zoo_root, tmp_path):
    base, _ = family
    suite = get_suite("zoo", zoo_root=zoo_root)
    in_memory = load_model(base)
    # perturb in memory, save, reload: the directory copy must score exactly like the object it came from
    with torch.no_grad():
        for p in in_memory.model.parameters():
            p.mul_(1.25)
    saved = tmp_path / "saved"
    in_memory.model.save_pretrained(saved)
    in_memory.tokenizer.save_pretrained(saved)
    rows_mem = _score(in_memory.model, in_memory.tokenizer, suite, "mem")
    reloaded = load_model(saved)
    rows_dir = _score(reloaded.model, reloaded.tokenizer, suite, reloaded.fingerprint)
    assert [(r.task, r.value, r.stderr, r.n) for r in rows_mem] == [
        (r.task, r.value, r.stderr, r.n) for r in rows_dir
    ]


@pytest.mark.slow
def test_values_are_the_models_loglikelihood_choices(family, zoo_root):
    loaded = load_model(family[1])
    suite = get_suite("zoo", zoo_root=zoo_root)
    rows = _score(loaded.model, loaded.tokenizer, suite, loaded.fingerprint)
    for row in rows:
        data = [
            json.loads(line) for line in (zoo_root / "tasks" / f"{row.task}.jsonl").read_text().splitlines()
        ]
        assert row.value == pytest.approx(_expected_acc(loaded.model, loaded.tokenizer, data))
        assert row.n == len(data) and row.metric == "acc" and row.limit is None
        assert row.suite == "zoo" and row.suite_version == suite.version and row.lm_eval_version == "0.4.13"
    assert aggregate(rows) == pytest.approx(sum(r.value for r in rows) / 2)


def test_limit_and_progress(family, zoo_root):
    loaded = load_model(family[0])
    suite = get_suite("zoo", zoo_root=zoo_root)
    seen = []
    rows = _score(loaded.model, loaded.tokenizer, suite, "fp", limit=3, on_progress=lambda *a: seen.append(a))
    assert [r.n for r in rows] == [3, 3] and all(r.limit == 3 for r in rows)
    assert seen == [(1, 2, "zoo_add"), (2, 2, "zoo_letters")]


def test_cache_is_keyed_by_fingerprint_suite_version_and_limit(family, zoo_root, eval_home):
    loaded = load_model(family[0])
    suite = get_suite("zoo", zoo_root=zoo_root)
    cache = DirectoryScoreCache()
    assert cache.root == eval_home / "cache" / "evals"
    first = _score(loaded.model, loaded.tokenizer, suite, "fp-a", cache=cache)
    # a different model under the same key is not run: the key is the identity
    other = load_model(family[1])
    again = evaluate(
        other.model, other.tokenizer, suite, fingerprint="fp-a", model_name="renamed", cache=cache
    )
    assert [r.value for r in again] == [r.value for r in first] and {r.model for r in again} == {"renamed"}
    assert again[0].seconds == first[0].seconds  # served, not re-timed
    assert cache.get("fp-a", suite.version, 2) is None and cache.get("fp-b", suite.version, None) is None
    fresh = _score(other.model, other.tokenizer, suite, "fp-b", cache=cache)
    assert cache.get("fp-b", suite.version, None) == fresh
    # how the model ran is part of the key: float32 on the CPU here, nothing stored for a GPU run
    assert {(r.dtype, r.device) for r in fresh} == {("float32", "cpu")}
    assert cache.get("fp-b", suite.version, None, dtype="float32", device="cpu") == fresh
    assert cache.get("fp-b", suite.version, None, dtype="bfloat16", device="cuda") is None
    other.model.to(torch.float64)
    rerun = _score(other.model, other.tokenizer, suite, "fp-b", cache=cache)
    assert {r.dtype for r in rerun} == {"float64"}  # scored again, not served the float32 rows
    assert cache.get("fp-b", suite.version, None, dtype="float64", device="cpu") == rerun
    assert cache.get("fp-b", suite.version, None, dtype="float32", device="cpu") == fresh


@pytest.mark.slow
def test_resident_model_scores_merges_under_their_fingerprint(family, zoo_root):
    base, ft = family
    suite = get_suite("zoo", zoo_root=zoo_root)
    resident = ResidentModel(base, device="cpu")
    base_rows = resident.score(suite, batch_size=4)
    assert {r.fingerprint for r in base_rows} == {resident.base_fingerprint}
    # what the engine's ModelSink does: copy another model's weights into the resident one
    ft_loaded = load_model(ft)
    resident.load_state_dict(ft_loaded.model.state_dict(), fingerprint="merge-1")
    merged_rows = resident.score(suite, batch_size=4, model_name="merge-1")
    direct = _score(ft_loaded.model, ft_loaded.tokenizer, suite, ft_loaded.fingerprint)
    assert [r.value for r in merged_rows] == [r.value for r in direct]
    assert {r.fingerprint for r in merged_rows} == {"merge-1"}
    resident.restore_base()
    assert [r.value for r in resident.score(suite, batch_size=4)] == [r.value for r in base_rows]


def test_model_without_tokenizer_is_a_clear_error(family, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(family[0], bare)
    for f in bare.iterdir():
        if "token" in f.name:
            f.unlink()
    with pytest.raises(EvaluationError, match="has no usable tokenizer"):
        load_model(bare)
    with pytest.raises(EvaluationError, match="checkpoint directory .* not found"):
        load_model(tmp_path / "nope")


def test_bad_batch_size_and_limit(family, zoo_root):
    loaded = load_model(family[0])
    suite = get_suite("zoo", zoo_root=zoo_root)
    with pytest.raises(EvaluationError, match="batch size"):
        evaluate(loaded.model, loaded.tokenizer, suite, fingerprint="x", model_name="x", batch_size="big")
    with pytest.raises(EvaluationError, match="limit must be a positive"):
        evaluate(loaded.model, loaded.tokenizer, suite, fingerprint="x", model_name="x", limit=0)
    with pytest.raises(EvaluationError, match="has no tokenizer"):
        evaluate(loaded.model, None, suite, fingerprint="x", model_name="x")


@pytest.mark.slow
def test_engine_model_sink_into_resident_model(family, zoo_root, tmp_path):
    """A task-arithmetic merge of base + one checkpoint at weight 1 is that checkpoint: written by the
    engine's ModelSink into the resident base (no disk), it scores like the checkpoint loaded from disk."""
    from merging import ModelSink, Recipe, run_merge

    base, ft = family
    suite = get_suite("zoo", zoo_root=zoo_root)
    resident = ResidentModel(base, device="cpu")
    recipe = Recipe.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [{"model": str(ft), "parameters": {"weight": 1.0}}],
        }
    )
    result = run_merge(recipe, ModelSink(resident.model), device="cpu")
    merged = resident.score(suite, fingerprint=result.fingerprint, batch_size=4)
    loaded = load_model(ft)
    direct = _score(loaded.model, loaded.tokenizer, suite, loaded.fingerprint)
    assert [r.value for r in merged] == pytest.approx([r.value for r in direct])
    assert {r.fingerprint for r in merged} == {result.fingerprint}
