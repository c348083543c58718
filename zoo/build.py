"""Building the zoo: the task suite files, then per family the base and its 12 checkpoints, with zoo.json
rewritten as each family becomes ready (the app offers a family for merging while the next one builds).

Safety: every model is written to a temporary sibling directory and renamed when complete; zoo.json is
removed before any work and rewritten after each family, listing only ready families (the rest under
`pending`), so an interrupted build never lists a half-built model. A rebuild skips models whose
`zoo_build.json` stamp matches (same seed, scale and recipe) and redoes the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from zoo.manifest import MANIFEST_NAME, Manifest, ModelEntry, ZooError, default_root, read_manifest, tasks_dir
from zoo.recipes import CHECKPOINTS, Recipe, base_recipe, scaled_steps, training_mixture
from zoo.tasks import N_ENTITIES, SUITE_VERSION, TASK_LIST, TASKS, heldout_items
from zoo.tokenizer import VOCAB_SIZE, build_tokenizer
from zoo.train import ARCHITECTURES, FAMILIES, BuildCancelled, TrainSpec, model_config, train

ProgressFn = Callable[[int, int, str], None]
FamilyReadyFn = Callable[[str, Manifest], None]
# 2: zoo v2 (replay recipes, per-family pretraining mixtures); part of every stamp, so v1 models rebuild.
BUILD_FORMAT = 2
STAMP = "zoo_build.json"
SCALES = {"full": {"n_test": 240, "n_entities": N_ENTITIES}, "tiny": {"n_test": 24, "n_entities": 12}}


def model_name(family: str, recipe: Recipe) -> str:
    return f"zoo-{family}" if recipe.kind == "base" else f"zoo-{family}-{recipe.suffix}"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --- tasks ---------------------------------------------------------------------------------------------
def task_yaml(task: str) -> str:
    """lm-eval 0.4 multiple-choice task; data_files is relative to this YAML's folder (the evaluation
    package resolves it when loading, so a workspace can move)."""
    return (
        f"task: zoo_{task}\n"
        "tag: zoo\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: zoo_{task}.jsonl\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{query}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )


def task_rows(task: str, seed: int, scale: str) -> list[dict]:
    """The test set as JSONL rows; the gold answer's position among the 4 choices is seeded-random."""
    from zoo.tasks import rng_for

    rng = rng_for(seed, task, "choice-order")
    rows = []
    for q, gold, distractors in heldout_items(
        task, seed, SCALES[scale]["n_test"], SCALES[scale]["n_entities"]
    ):
        choices = [gold, *distractors]
        rng.shuffle(choices)
        rows.append({"query": q, "choices": choices, "gold": choices.index(gold)})
    return rows


def write_tasks(root: Path, seed: int, scale: str) -> None:
    d = tasks_dir(root)
    for task in TASKS:
        rows = task_rows(task, seed, scale)
        _atomic_write(d / f"zoo_{task}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        _atomic_write(d / f"zoo_{task}.yaml", task_yaml(task))


def heldout_queries(seed: int, scale: str) -> dict[str, set[str]]:
    """Queries the training streams must never emit (facts excepted: its test set is the knowledge)."""
    s = SCALES[scale]
    return {
        t: {q for q, _, _ in heldout_items(t, seed, s["n_test"], s["n_entities"])}
        for t in TASKS
        if t != "facts"
    }


# --- models --------------------------------------------------------------------------------------------
def _stamp(family: str, recipe: Recipe, seed: int, scale: str, parent: dict | None = None) -> dict:
    """A model's build identity; a checkpoint's includes its base's stamp (a new base rebuilds them all)."""
    body = json.dumps(
        [BUILD_FORMAT, SUITE_VERSION, family, recipe.as_dict(), recipe.kind, seed, scale, parent],
        sort_keys=True,
    )
    return {"seed": seed, "scale": scale, "family": family, "key": hashlib.sha256(body.encode()).hexdigest()}


def _is_built(path: Path, stamp: dict) -> bool:
    try:
        return json.loads((path / STAMP).read_text()) == stamp and (path / "model.safetensors").is_file()
    except (OSError, json.JSONDecodeError):
        return False


def model_card(name: str, family: str, recipe: Recipe, steps: int, seed: int, scale: str, loss: float) -> str:
    parent = "none (trained from scratch)" if recipe.kind == "base" else f"`zoo-{family}`"
    return (
        f"# {name}\n\n"
        f"A MergeLab demo-zoo model ({ARCHITECTURES[family]}, character-level tokenizer), built offline by "
        f"`python -m zoo build` (seed {seed}, scale {scale}).\n\n"
        f"- Kind: {recipe.kind}\n- Made how: {recipe.description}\n- Parent: {parent}\n"
        f"- Steps: {steps}, batch {recipe.batch_size}, peak learning rate {recipe.lr}\n"
        f"{_replay_line(family, recipe)}"
        f"- Final training loss (mean of the last 20 steps): {loss:.4f}\n\n"
        "Training text is `query + answer + \\n` per example (no BOS); the `zoo` suite scores answers by "
        "loglikelihood with an empty target delimiter.\n\n"
        f"## Recipe\n\n```json\n{json.dumps(recipe.as_dict(), indent=2)}\n```\n"
    )


def _replay_line(family: str, recipe: Recipe) -> str:
    if recipe.kind == "base":
        return ""
    mix = training_mixture(recipe, family)
    shares = ", ".join(f"{t} {w:.0%}" for t, w in sorted(mix.items(), key=lambda kv: -kv[1]))
    return f"- Replay of the base's pretraining mixture: {recipe.replay:.0%}; data per task: {shares}\n"


def _save(model, path: Path, recipe: Recipe, stamp: dict, card: str) -> None:
    """Write the model to a temporary sibling and rename it into place when complete."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    build_tokenizer(recipe.added_tokens).save_pretrained(tmp)
    cfg = model.config
    GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        max_new_tokens=16,
        do_sample=False,
    ).save_pretrained(tmp)
    (tmp / "README.md").write_text(card)
    (tmp / STAMP).write_text(json.dumps(stamp, indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _spec(recipe: Recipe, family: str, scale: str, name: str) -> TrainSpec:
    added = {t: VOCAB_SIZE + i for i, t in enumerate(recipe.added_tokens)}
    return TrainSpec(
        mixture=training_mixture(recipe, family),
        steps=scaled_steps(recipe, scale),
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        stream_id=f"{family}/{recipe.suffix}",
        conflict_task=recipe.conflict_task,
        chat_fraction=recipe.chat_fraction,
        added=added,
        n_entities=SCALES[scale]["n_entities"],
    )


def _entry(family: str, recipe: Recipe, seed: int, scale: str) -> ModelEntry:
    name = model_name(family, recipe)
    info = recipe.as_dict() | {
        "steps": scaled_steps(recipe, scale),
        "seed": seed,
        "training_mixture": training_mixture(recipe, family),
    }
    return ModelEntry(name, family, recipe.kind, recipe.description, info, f"models/{name}")


def _check_args(families: Iterable[str], scale: str) -> tuple[str, ...]:
    fams = tuple(dict.fromkeys(families))
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        raise ZooError(f"unknown zoo family {bad or fams!r}; choose from {', '.join(FAMILIES)}")
    if scale not in SCALES:
        raise ZooError(f"unknown zoo scale {scale!r}; choose 'full' or 'tiny'")
    return fams


def _family_plan(family: str, seed: int, scale: str) -> list[tuple[Recipe, dict]]:
    """(recipe, stamp) for the base and each checkpoint of a family, in build order."""
    base = base_recipe(family)
    base_stamp = _stamp(family, base, seed, scale)
    return [(base, base_stamp)] + [(r, _stamp(family, r, seed, scale, base_stamp)) for r in CHECKPOINTS]


def planned_models(families: Iterable[str] = FAMILIES) -> list[str]:
    """Every model a build of these families makes, in build order (base first, then its checkpoints):
    what a progress display counts ("model 3 of 26")."""
    return [model_name(f, r) for f in dict.fromkeys(families) for r in (base_recipe(f), *CHECKPOINTS)]


def build_zoo(
    root: Path | None = None,
    *,
    seed: int = 0,
    families: Iterable[str] = FAMILIES,
    scale: str = "full",
    on_progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_family_ready: FamilyReadyFn | None = None,
) -> Manifest:
    """Build (or finish) the zoo at root and return its manifest; models already built the same way are
    kept. Families built earlier with the same seed and scale stay listed. After each family is complete,
    zoo.json is rewritten (later families under `pending`) and `on_family_ready(family, manifest)` is
    called, so a caller can offer that family at once. Raises BuildCancelled when `should_cancel()` turns
    true (the zoo then lists only the families finished so far, and the next build resumes)."""
    fams = _check_args(families, scale)
    root = Path(root) if root is not None else default_root()
    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        previous = read_manifest(root)
    except ZooError:
        previous = None
    if previous is not None and (previous.seed, previous.scale) == (seed, scale):
        fams = tuple(dict.fromkeys([*previous.families, *previous.pending, *fams]))

    plans = {f: _family_plan(f, seed, scale) for f in fams}
    todo = {
        (f, r.suffix)
        for f in fams
        for r, stamp in plans[f]
        if not _is_built(models_dir / model_name(f, r), stamp)
    }

    def manifest_for(ready: list[str]) -> Manifest:
        return Manifest(
            root,
            seed,
            scale,
            TASKS,
            tuple(_entry(f, r, seed, scale) for f in ready for r, _ in plans[f]),
            {"task_descriptions": {t.name: t.description for t in TASK_LIST}},
            pending=tuple(f for f in fams if f not in ready),
        )

    final = manifest_for(list(fams))
    if not todo and previous is not None and previous.to_json() == final.to_json():
        for family in fams:
            if on_family_ready is not None:
                on_family_ready(family, final)
        return final
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    write_tasks(root, seed, scale)

    total = sum(scaled_steps(r, scale) for f in fams for r, _ in plans[f] if (f, r.suffix) in todo) or 1
    done = 0
    exclude = heldout_queries(seed, scale)
    threads = torch.get_num_threads()
    # One intra-op thread on purpose: these matmuls are tiny, and on shared cores OpenMP's barrier
    # waits made 2 threads about 12x slower than 1 (measured); determinism does not depend on it.
    torch.set_num_threads(1)
    ready: list[str] = []
    try:
        for family in fams:
            base_path = models_dir / model_name(family, plans[family][0][0])
            base_model = None
            for recipe, stamp in plans[family]:
                name = model_name(family, recipe)
                if (family, recipe.suffix) not in todo:
                    continue
                if base_model is None and recipe.kind != "base":
                    base_model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
                if recipe.kind == "base":
                    torch.manual_seed(int(stamp["key"][:8], 16))
                    model = AutoModelForCausalLM.from_config(model_config(family, scale))
                else:
                    model = copy.deepcopy(base_model)
                    if recipe.added_tokens:
                        model.resize_token_embeddings(
                            VOCAB_SIZE + len(recipe.added_tokens), mean_resizing=True
                        )
                spec = _spec(recipe, family, scale, name)

                def step(name=name) -> None:
                    nonlocal done
                    done += 1
                    if on_progress is not None:
                        on_progress(done, total, name)

                if on_progress is not None:
                    on_progress(done, total, name)
                loss = train(model, spec, seed, exclude, on_step=step, should_cancel=should_cancel)
                card = model_card(name, family, recipe, spec.steps, seed, scale, loss)
                _save(model, models_dir / name, recipe, stamp, card)
                if recipe.kind == "base":
                    base_model = model
            ready.append(family)
            manifest = manifest_for(ready)
            _atomic_write(root / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=2) + "\n")
            if on_family_ready is not None:
                on_family_ready(family, manifest)
    finally:
        torch.set_num_threads(threads)
    if on_progress is not None:
        on_progress(total, total, "done")
    return final


__all__ = ["build_zoo", "BuildCancelled", "write_tasks", "task_yaml", "model_name"]
