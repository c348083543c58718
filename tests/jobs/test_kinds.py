"""The built-in job kinds on tiny real models: merges, scores, geometry and job rows end up in DuckDB."""

import threading

import pytest
import yaml

from jobs import JobRunner
from jobs.work import TrackedDirectorySink, run_merge_tracked
from store import Store


def _recipe(base, cks, method, **params):
    per_model = {"weight": 1.0} if method != "model_stock" else {}
    if "density" in params:
        per_model["density"] = params.pop("density")
    doc = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(c), "parameters": per_model} for c in cks],
    }
    if params:
        doc["parameters"] = params
    return yaml.safe_dump(doc)


@pytest.mark.slow
def test_twenty_merge_evaluate_jobs_from_threads(tmp_path, home, tiny_llama_family, zoo_tasks):
    base, cks = tiny_llama_family
    recipes = [_recipe(base, cks, "task_arithmetic", **{"lambda": 0.1 * (i + 1)}) for i in range(10)]
    recipes += [_recipe(base, cks, "ties", density=0.1 * (i + 1)) for i in range(10)]
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, devices=["cpu", "cpu"])
        ids, lock = [], threading.Lock()

        def submit(chunk):
            for text in chunk:
                jid = runner.submit(
                    "merge+evaluate", {"recipe_yaml": text, "suite": "zoo", "zoo_root": str(zoo_tasks)}
                )
                with lock:
                    ids.append(jid)

        threads = [threading.Thread(target=submit, args=(recipes[i::4],)) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        records = runner.wait(ids, timeout=600)
        runner.shutdown()
        assert [r.status for r in records] == ["done"] * 20, [r.error for r in records if r.error]
        merges = store.merges_df()
        assert len(merges) == 20 and set(merges.status) == {"done"}
        assert merges.merged_fingerprint.nunique() == 20
        assert store.count("eval_rows") == 20  # one task, one row per merged model
        assert store.count("model_stats") == 20
        n_tensors = len(store.tensor_stats_df(merges.id.iloc[0]))
        assert n_tensors > 0 and store.count("tensor_stats") == 20 * n_tensors
        assert set(store.models_df().kind) == {"base", "checkpoint", "merged"}
        assert len(store.models_df("checkpoint")) == 3
        # one resident base model served every job (per device)
        assert {k[0] for k in runner.loaded_residents()} == {str(base)}


@pytest.mark.slow
def test_merge_job_writes_a_folder_and_evaluate_reuses_stored_scores(
    tmp_path, home, tiny_llama_family, zoo_tasks
):
    base, cks = tiny_llama_family
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store)
        out = tmp_path / "merged"
        merge = runner.submit("merge", {"recipe_yaml": _recipe(base, cks, "model_stock"), "output": str(out)})
        (rec,) = runner.wait([merge], timeout=120)
        assert rec.status == "done", rec.error
        assert (out / "config.json").exists() and rec.result["output_path"] == str(out)
        row = store.get_merge(rec.result["merge_id"])
        assert row["status"] == "done" and row["peak_memory_bytes"] > 0 and row["output_path"] == str(out)
        assert len(row["checkpoint_fingerprints"]) == 3 and row["base_fingerprint"]
        params = {"model": str(out), "suite": "zoo", "zoo_root": str(zoo_tasks)}
        first, second = (runner.wait([runner.submit("evaluate", params)], timeout=120)[0] for _ in range(2))
        runner.shutdown()
        assert first.status == second.status == "done" and first.result == second.result
        assert store.count("eval_rows") == 1


def test_cancelled_merge_leaves_no_output(tmp_path, tiny_llama_family):
    from merging import MergeCancelled, Recipe

    base, cks = tiny_llama_family
    out = tmp_path / "out"
    temps: list[str] = []
    sink = TrackedDirectorySink(out, temps.append, temps.remove)
    calls = []

    def cancel_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(MergeCancelled):
        run_merge_tracked(
            Recipe.from_yaml(_recipe(base, cks, "ties", density=0.5)),
            sink,
            device="cpu",
            should_cancel=cancel_after_two,
        )
    assert not out.exists() and list(tmp_path.iterdir()) == [] and temps == []


def test_bad_recipe_is_refused_at_submit(tmp_path, tiny_llama_family):
    from jobs import JobError
    from merging import RecipeError

    base, cks = tiny_llama_family
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, start=False)
        with pytest.raises(RecipeError, match="density"):
            runner.submit("merge", {"recipe_yaml": _recipe(base, cks, "ties", density=7.0)})
        with pytest.raises(JobError, match="needs recipe_yaml"):
            runner.submit("merge+evaluate", {"suite": "zoo"})
        assert store.count("jobs") == 0
