"""Fixtures for the app tests: an empty workspace, and one populated through the real layers.

The populated workspace holds a tiny Llama family registered through ui.catalog (merging + store), one
Task Arithmetic merge run by the real JobRunner ("merge" job: engine, geometry, merge record), a second
merge recorded as part of a study, and evaluation rows written through the store with hand-set values
(scoring tiny random models with lm-eval would only add minutes, not coverage of the app).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ("home", "models", "merge", "compare", "jobs", "results", "geometry", "study")
SUITE = "unit"
# Hand-set task scores: base 0.50 / 0.40, checkpoints around it, merge above both.
TASKS = ("t_add", "t_copy")


def app_test(home: Path, page: str | None = None):
    """An AppTest of app.py on `home`, already run on `page` (default: Home)."""
    from streamlit.testing.v1 import AppTest

    os.environ["MERGELAB_HOME"] = str(home)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page and page != "home":
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def plot_values(v):
    """A Plotly JSON array as a list: plain lists as they are, typed arrays {dtype, bdata, shape} decoded."""
    import base64

    import numpy as np

    if isinstance(v, dict) and "bdata" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        if v.get("shape"):
            arr = arr.reshape([int(x) for x in str(v["shape"]).split(",")])
        return arr.tolist()
    return v


def errors_of(at) -> list[str]:
    """Every exception and error box on the page, as text (empty when the page rendered cleanly)."""
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "ws"
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    return home


def _score_rows(fp: str, name: str, values: tuple[float, float]) -> list[dict]:
    return [
        {
            "fingerprint": fp,
            "model_name": name,
            "suite": SUITE,
            "suite_version": "v1",
            "task": task,
            "metric": "acc",
            "value": value,
            "stderr": 0.01,
            "n": 100,
            "limit": None,
            "lm_eval_version": "test",
            "seconds": 0.1,
        }
        for task, value in zip(TASKS, values, strict=True)
    ]


@pytest.fixture
def registered_home(tiny_llama_family, tmp_path):
    """A fresh workspace with the tiny family registered (base + 3 checkpoints) and nothing else."""
    from store import Store
    from ui import catalog

    home = tmp_path / "registered"
    base, cks = tiny_llama_family
    with Store(home / "mergelab.duckdb") as db:
        catalog.register(db, str(base), "base")
        for c in cks:
            catalog.register(db, str(c), "checkpoint")
    return home


@pytest.fixture(scope="session")
def populated_home(tiny_llama_family, tmp_path_factory):
    """A workspace with models, a finished TA merge with geometry and spectra, scores, and a study."""
    import merging
    from jobs import JobRunner
    from store import Store
    from ui import catalog

    home = tmp_path_factory.mktemp("populated")
    base, cks = tiny_llama_family
    db = Store(home / "mergelab.duckdb")
    info_base = catalog.register(db, str(base), "base")
    infos = [catalog.register(db, str(c), "checkpoint") for c in cks]

    recipe = merging.Recipe(
        merge_method="task_arithmetic",
        base_model=str(base),
        models=[merging.ModelEntry(model=str(c), parameters={"weight": 1.0}) for c in cks],
        parameters={"lambda": 1.0, "normalize": True},
    )
    runner = JobRunner(db, workers=1)
    try:
        job_id = runner.submit(
            "merge",
            {"recipe_yaml": recipe.to_yaml(), "output": str(home / "merges" / "ta"), "spectra": "all"},
        )
        (job,) = runner.wait([job_id], timeout=120)
        assert job.status == "done", job.error
    finally:
        runner.shutdown()
    merge = db.merges_df().iloc[0]

    # A study of two size-2 subsets, recorded through the store (their merged weights are not needed by the
    # pages, only their records, distances and scores).
    study_id = db.create_study(
        name="unit study",
        base=str(base),
        pool=[str(c) for c in cks],
        methods=["task_arithmetic"],
        sizes=[2],
        subsets_per_size=2,
        seed=0,
        suite=SUITE,
    )
    study_fps = []
    for k, pair in enumerate(([cks[0], cks[1]], [cks[1], cks[2]])):
        sub = merging.Recipe(
            merge_method="task_arithmetic",
            base_model=str(base),
            models=[merging.ModelEntry(model=str(c), parameters={"weight": 1.0}) for c in pair],
            parameters={"normalize": True},
        )
        mid = db.begin_merge(
            recipe_yaml=sub.to_yaml(),
            method="task_arithmetic",
            base_fingerprint=info_base["fingerprint"],
            checkpoint_refs=[str(c) for c in pair],
            study_id=study_id,
            subset_id=f"n2-{k}",
        )
        fp = f"study-merge-{k}"
        db.finish_merge(mid, "done", seconds=0.1, merged_fingerprint=fp)
        db.put_merge_stats(mid, model={"model_delta_norm": 1.0 + k, "model_task_norms": [1.0, 1.0]})
        study_fps.append(fp)

    rows = _score_rows(info_base["fingerprint"], "base", (0.50, 0.40))
    for i, info in enumerate(infos):
        rows += _score_rows(info["fingerprint"], info["name"], (0.48 + 0.01 * i, 0.42))
    rows += _score_rows(merge["merged_fingerprint"], "ta-merge", (0.55, 0.45))
    rows += _score_rows(study_fps[0], "s0", (0.52, 0.41))
    rows += _score_rows(study_fps[1], "s1", (0.47, 0.40))
    db.put_eval_rows(rows)
    db.close()
    return home
