"""End-to-end checks of a tiny zoo build: layout, manifest, loadable models, lm-eval task loading,
idempotence, and recovery from an interrupted build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from zoo import (
    TASKS,
    BuildCancelled,
    ZooError,
    build_zoo,
    default_root,
    is_complete,
    load_manifest,
    ready_manifest,
    tasks_dir,
)
from zoo.recipes import CHECKPOINTS
from zoo.tokenizer import VOCAB_SIZE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    calls = []
    ready = []

    def family_ready(family, manifest):
        # what a reader sees at this moment: the ready family listed, the rest pending, files on disk
        ready.append((family, manifest, is_complete(root), ready_manifest(root), len(calls)))

    manifest = build_zoo(
        root,
        seed=0,
        scale="tiny",
        on_progress=lambda d, t, m: calls.append((d, t, m)),
        on_family_ready=family_ready,
    )
    return root, manifest, calls, ready


def test_layout_and_manifest(tiny_zoo):
    root, manifest, calls, _ = tiny_zoo
    assert is_complete(root)
    assert load_manifest(root) == manifest
    data = json.loads((root / "zoo.json").read_text())
    assert data["tasks"] == list(TASKS) and data["scale"] == "tiny" and data["seed"] == 0
    assert data["families"]["llama"]["base"] == "zoo-llama"
    assert len(data["families"]["qwen3"]["checkpoints"]) == 12
    assert manifest.families == ("llama", "qwen3")
    assert manifest.base_dir("llama") == root / "models" / "zoo-llama"
    names = [p.name for p in manifest.checkpoint_dirs("qwen3")]
    assert names == [f"zoo-qwen3-{r.suffix}" for r in CHECKPOINTS]
    assert "zoo-llama-add-specialist" in names[0].replace("qwen3", "llama")
    kinds = {m.kind for m in manifest.checkpoints("llama")}
    assert kinds == {"specialist", "generalist", "long", "conflict", "added-vocab", "barely", "new-skill"}
    assert all(m.description and m.recipe["steps"] >= 1 for m in manifest.models)
    assert calls[-1][0] == calls[-1][1]  # progress ends at total
    for t in TASKS:
        assert (tasks_dir(root) / f"zoo_{t}.jsonl").is_file()
        assert yaml.safe_load((tasks_dir(root) / f"zoo_{t}.yaml").read_text())["task"] == f"zoo_{t}"
    with pytest.raises(ZooError, match="no 'gpt2' family"):
        manifest.base_dir("gpt2")


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_models_load_offline_and_give_finite_logits(tiny_zoo, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, manifest, _, _ = tiny_zoo
    arch = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    for d in [manifest.base_dir(family), *manifest.checkpoint_dirs(family)]:
        for f in (
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "README.md",
        ):
            assert (d / f).is_file(), d / f
        model = AutoModelForCausalLM.from_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert type(model).__name__ == arch
        ids = torch.tensor([tok.encode("12+34=46\n")])
        assert torch.isfinite(model(input_ids=ids).logits).all()
    chat = AutoModelForCausalLM.from_pretrained(manifest.model_dir(f"zoo-{family}-chat"))
    assert chat.get_input_embeddings().weight.shape[0] == VOCAB_SIZE + 3
    assert chat.get_output_embeddings().weight.shape[0] == VOCAB_SIZE + 3
    tok = AutoTokenizer.from_pretrained(manifest.model_dir(f"zoo-{family}-chat"))
    assert tok.encode("<q>1<a>") == [VOCAB_SIZE, 5, VOCAB_SIZE + 1]
    base = AutoModelForCausalLM.from_pretrained(manifest.base_dir(family))
    assert base.get_input_embeddings().weight.shape[0] == VOCAB_SIZE
    card = (manifest.model_dir(f"zoo-{family}-add-plus-one") / "README.md").read_text()
    assert "a+b+1" in card and '"conflict_task": "add"' in card


def test_task_yamls_load_in_lm_eval(tiny_zoo, tmp_path):
    from lm_eval.tasks import TaskManager

    root, _, _, _ = tiny_zoo
    # data_files is relative to the YAML's folder; resolve it the way the evaluation package does
    for y in tasks_dir(root).glob("zoo_*.yaml"):
        cfg = yaml.safe_load(y.read_text())
        cfg["dataset_kwargs"]["data_files"]["test"] = str(
            y.parent / cfg["dataset_kwargs"]["data_files"]["test"]
        )
        (tmp_path / y.name).write_text(yaml.safe_dump(cfg))
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {f"zoo_{t}" for t in TASKS} <= set(tm.all_tasks)
    task = tm.load_task_or_group(["zoo_add"])["zoo_add"]
    docs = list(task.test_docs())
    assert len(docs) == 24
    assert task.doc_to_choice(docs[0])[task.doc_to_target(docs[0])] == str(eval(docs[0]["query"][:-1]))


def test_rebuild_is_idempotent(tiny_zoo):
    root, manifest, _, _ = tiny_zoo
    stamp = {p: p.stat().st_mtime_ns for p in (root / "models").glob("*/model.safetensors")}
    calls = []
    assert build_zoo(root, seed=0, scale="tiny", on_progress=lambda *a: calls.append(a)) == manifest
    assert calls == []
    assert stamp == {p: p.stat().st_mtime_ns for p in (root / "models").glob("*/model.safetensors")}


@pytest.mark.parametrize("how", ["cancel", "exception"])
def test_interrupted_build_is_incomplete_and_recovers(tiny_zoo, tmp_path, how):
    ref_root, _, _, _ = tiny_zoo
    seen = []

    def progress(done, total, name):
        seen.append(name)
        if how == "exception" and name == "zoo-llama-max-specialist":
            raise RuntimeError("power cut")

    def cancel():
        return how == "cancel" and "zoo-llama-max-specialist" in seen

    error = BuildCancelled if how == "cancel" else RuntimeError
    with pytest.raises(error):
        build_zoo(tmp_path, families=("llama",), scale="tiny", on_progress=progress, should_cancel=cancel)
    assert not is_complete(tmp_path)
    assert load_manifest(tmp_path) is None
    built = sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith("."))
    assert "zoo-llama-max-specialist" not in built and "zoo-llama-add-specialist" in built
    before = (tmp_path / "models" / "zoo-llama-add-specialist" / "model.safetensors").stat().st_mtime_ns

    manifest = build_zoo(tmp_path, families=("llama",), scale="tiny")
    assert is_complete(tmp_path) and manifest.families == ("llama",)
    assert (
        tmp_path / "models" / "zoo-llama-add-specialist" / "model.safetensors"
    ).stat().st_mtime_ns == before
    # deterministic for a seed: the resumed build equals the uninterrupted one, byte for byte
    for name in ("zoo-llama", "zoo-llama-max-specialist", "zoo-llama-mul-skill"):
        new = (tmp_path / "models" / name / "model.safetensors").read_bytes()
        assert new == (ref_root / "models" / name / "model.safetensors").read_bytes(), name


def test_incomplete_zoo_is_reported_clearly(tiny_zoo, tmp_path):
    root, _, _, _ = tiny_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "models" / "zoo-qwen3-chat")
    assert not is_complete(copy)
    with pytest.raises(ZooError, match="incomplete"):
        load_manifest(copy)
    assert load_manifest(tmp_path / "nowhere") is None


def test_default_root_follows_mergelab_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGELAB_HOME", str(tmp_path))
    assert default_root() == tmp_path / "zoo"
    assert tasks_dir() == tmp_path / "zoo" / "tasks"
    monkeypatch.delenv("MERGELAB_HOME")
    assert default_root() == Path.cwd() / "workspace" / "zoo"


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ZooError, match="unknown zoo family"):
        build_zoo(tmp_path, families=("gpt2",))
    with pytest.raises(ZooError, match="unknown zoo scale"):
        build_zoo(tmp_path, scale="huge")


def test_first_family_is_offered_while_the_second_builds(tiny_zoo):
    root, manifest, calls, ready = tiny_zoo
    assert [r[0] for r in ready] == ["llama", "qwen3"]
    family, first, complete, on_disk, progress_at = ready[0]
    assert first.families == ("llama",) and first.pending == ("qwen3",)
    assert not complete and on_disk == first  # zoo.json already lists llama, with qwen3 pending
    assert on_disk.names("llama")[0] == "zoo-llama" and len(on_disk.checkpoints("llama")) == 12
    assert not any(m.family == "qwen3" for m in on_disk.models)
    assert any(name.startswith("zoo-qwen3") for _, _, name in calls[progress_at:])  # qwen3 trained after
    _, last, complete, on_disk, _ = ready[1]
    assert last == manifest and last.pending == () and complete and on_disk == manifest
    data = json.loads((root / "zoo.json").read_text())
    assert data["pending"] == [] and list(data["families"]) == ["llama", "qwen3"]
    card = (manifest.model_dir("zoo-llama-add-specialist") / "README.md").read_text()
    assert "Replay of the base's pretraining mixture: 50%" in card
    assert manifest.model("zoo-llama-add-specialist").recipe["replay"] == 0.5


def test_a_build_stopped_after_one_family_offers_it_and_resumes(tiny_zoo, tmp_path):
    ref_root, _, _, _ = tiny_zoo

    def cancel_in_qwen3():
        return (tmp_path / "models" / "zoo-qwen3").is_dir()

    with pytest.raises(BuildCancelled):
        build_zoo(tmp_path, scale="tiny", should_cancel=cancel_in_qwen3)
    assert not is_complete(tmp_path)
    partial = load_manifest(tmp_path)
    assert partial.families == ("llama",) and partial.pending == ("qwen3",)
    # the next build finishes the pending family without retraining the ready one
    llama = (tmp_path / "models" / "zoo-llama-chat" / "model.safetensors").stat().st_mtime_ns
    seen = []
    manifest = build_zoo(
        tmp_path, scale="tiny", families=("llama",), on_family_ready=lambda f, m: seen.append(f)
    )
    assert seen == ["llama", "qwen3"] and manifest.families == ("llama", "qwen3") and is_complete(tmp_path)
    assert (tmp_path / "models" / "zoo-llama-chat" / "model.safetensors").stat().st_mtime_ns == llama
    for name in ("zoo-qwen3", "zoo-qwen3-marathon"):
        new = (tmp_path / "models" / name / "model.safetensors").read_bytes()
        assert new == (ref_root / "models" / name / "model.safetensors").read_bytes(), name
