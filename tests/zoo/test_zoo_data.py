"""Fast checks of the zoo's tokenizer and task generators (no training)."""

from __future__ import annotations

import itertools
import json

import pytest
import yaml

from zoo import TASKS
from zoo.build import heldout_queries, task_rows, task_yaml
from zoo.tasks import fact_base, get_task, heldout_items, training_stream
from zoo.tokenizer import VOCAB_SIZE, build_tokenizer, encode


def test_tokenizer_round_trip_and_fast_encoding(tmp_path):
    from transformers import AutoTokenizer

    text = "add 12+35=47\nHello, World! (x*y) <q>sort 9031=0139<a>"
    build_tokenizer(["<q>", "<a>", "<e>"]).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == encode(text, {"<q>": VOCAB_SIZE, "<a>": VOCAB_SIZE + 1, "<e>": VOCAB_SIZE + 2})
    assert len(tok) == VOCAB_SIZE + 3
    # one id per character, digits first after the 4 specials, and no BOS/EOS added
    assert tok.encode("0a") == [4, 14]
    assert tok.decode(tok.encode(" a  b ")) == " a  b "


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic_for_a_seed(task):
    assert heldout_items(task, 3, 30) == heldout_items(task, 3, 30)
    assert heldout_items(task, 3, 30) != heldout_items(task, 4, 30)
    a = list(itertools.islice(training_stream(task, 3, "s", set()), 25))
    assert a == list(itertools.islice(training_stream(task, 3, "s", set()), 25))
    assert a != list(itertools.islice(training_stream(task, 3, "other", set()), 25))


def _solve(task: str, query: str, seed: int) -> str:
    """An independent solver for each task's query text."""
    body = query.rstrip("=")
    if task == "add":
        a, b = body.split("+")
        return str(int(a) + int(b))
    if task == "sub":
        a, b = body.split("-")
        return str(int(a) - int(b))
    arg = body.split(" ", 1)[1] if " " in body else body
    if task == "max":
        return str(max(map(int, arg.split())))
    if task == "sort":
        return "".join(sorted(arg))
    if task == "rev":
        return arg[::-1]
    if task == "dsum":
        return str(sum(map(int, arg)))
    if task == "count":
        letter, _, word = arg.split(" ")
        return str(word.count(letter))
    entity, rel = body.split(" ")
    return fact_base(seed)[(entity, rel)]


@pytest.mark.parametrize("task", TASKS)
def test_test_items_are_correct_with_same_length_distractors(task):
    items = heldout_items(task, 0, 200)
    assert len(items) >= 200
    assert len({q for q, _, _ in items}) == len(items)
    for q, gold, distractors in items:
        assert gold == _solve(task, q, 0)
        assert len(distractors) == 3 and len({gold, *distractors}) == 4
        assert all(len(d) == len(gold) for d in distractors)


def test_hand_computed_items():
    assert _solve("add", "75+23=", 0) == "98"
    assert heldout_items("add", 0, 1)[0][:2] == ("75+3=", "78")
    assert _solve("dsum", "dsum 386=", 0) == "17"
    assert _solve("count", "count c in dadbdaa=", 0) == "0"


@pytest.mark.parametrize("task", [t for t in TASKS if t != "facts"])
def test_training_text_never_contains_a_test_query(task):
    exclude = heldout_queries(0, "full")[task]
    assert len(exclude) == 240
    for q, a in itertools.islice(training_stream(task, 0, "pretrain", exclude), 1000):
        assert q not in exclude
        assert a == _solve(task, q, 0)


def test_facts_test_set_is_the_fact_base_by_design():
    # closed-book knowledge: training recalls the very facts the test asks about
    facts = {q for q, _ in itertools.islice(training_stream("facts", 0, "x", set()), 5000)}
    assert facts == {q for q, _, _ in heldout_items("facts", 0, 0)}


def test_jsonl_rows_and_yaml_follow_the_lm_eval_contract():
    rows = task_rows("add", 0, "full")
    assert len(rows) == 240
    first = rows[0]
    assert first["query"] == "75+3=" and first["choices"][first["gold"]] == "78"
    assert sorted(first["choices"]) == ["58", "68", "78", "79"]
    assert json.loads(json.dumps(first)) == first
    cfg = yaml.safe_load(task_yaml("add"))
    assert cfg["task"] == "zoo_add" and cfg["tag"] == "zoo"
    assert cfg["dataset_path"] == "json"
    assert cfg["dataset_kwargs"] == {"data_files": {"test": "zoo_add.jsonl"}}
    assert cfg["test_split"] == "test" and cfg["output_type"] == "multiple_choice"
    assert (cfg["doc_to_text"], cfg["doc_to_choice"], cfg["doc_to_target"]) == (
        "{{query}}",
        "{{choices}}",
        "{{gold}}",
    )
    assert cfg["target_delimiter"] == ""
    assert cfg["metric_list"] == [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]


def test_add_always_offers_the_off_by_one_answer():
    # the conflicting checkpoint learns a+b+1, so the suite must be able to catch that slip
    for q, gold, distractors in heldout_items("add", 0, 240):
        if len(str(int(gold) + 1)) == len(gold):
            assert str(int(gold) + 1) in distractors, q


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown zoo task 'nope'"):
        get_task("nope")


# --- zoo v2 recipes (no training) ----------------------------------------------------------------------
def test_recipes_replay_the_bases_mixture_and_are_deterministic():
    from zoo.build import _family_plan, _stamp
    from zoo.recipes import CHECKPOINTS, PRETRAIN, base_recipe, training_mixture
    from zoo.train import FAMILIES

    assert len(CHECKPOINTS) == 12 and len({r.suffix for r in CHECKPOINTS}) == 12
    for family in FAMILIES:
        base = base_recipe(family)
        assert base.mixture == PRETRAIN[family] and training_mixture(base, family) == PRETRAIN[family]
        for r in CHECKPOINTS:
            mix = training_mixture(r, family)
            assert sum(mix.values()) == pytest.approx(1.0)
            assert 0 < r.replay <= 1 and r.lr <= base.lr / 3 and r.steps <= 1000
            # every suite task gets at least the replayed share of the base's own weight
            pre_total = sum(PRETRAIN[family].values())
            for t, w in PRETRAIN[family].items():
                assert mix[t] >= r.replay * w / pre_total - 1e-12
            if r.replay < 1:
                focus = sum(mix.get(t, 0.0) for t in r.mixture) - sum(
                    r.replay * PRETRAIN[family].get(t, 0.0) / pre_total for t in r.mixture
                )
                assert focus == pytest.approx(1 - r.replay)
        assert _family_plan(family, 0, "full") == _family_plan(family, 0, "full")
    # hand-computed: 50% replay of llama's mixture (total 9.7) plus 50% add
    add = next(r for r in CHECKPOINTS if r.suffix == "add-specialist")
    mix = training_mixture(add, "llama")
    assert mix["add"] == pytest.approx(0.5 / 9.7 + 0.5) and mix["sub"] == pytest.approx(0.5 * 1.5 / 9.7)
    # the kinds of a pool in the wild, each once or more
    kinds = {r.kind for r in CHECKPOINTS}
    assert kinds == {"specialist", "generalist", "long", "conflict", "added-vocab", "barely", "new-skill"}
    long_run = next(r for r in CHECKPOINTS if r.kind == "long")
    assert long_run.steps >= 3 * max(r.steps for r in CHECKPOINTS if r.kind == "specialist")
    # a checkpoint's stamp follows its base's: a new base recipe rebuilds every checkpoint
    a = _stamp("llama", add, 0, "full", {"key": "base-1"})
    assert (
        a
        == _stamp("llama", add, 0, "full", {"key": "base-1"})
        != _stamp("llama", add, 0, "full", {"key": "b2"})
    )
    assert _stamp("llama", add, 0, "full", None) != _stamp("qwen3", add, 0, "full", None)
