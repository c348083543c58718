"""A merge job whose recording fails (after the engine finished) closes its merge record as failed, on disk
and in memory: no row is left `running`."""

from __future__ import annotations

import threading

import pytest

from jobs import kinds
from jobs.context import JobContext
from jobs.resident import ResidentPool
from store import Store
from tests.jobs.test_kinds import _recipe


def _context(store, kind, params):
    job_id = store.add_job(kind, params)
    job = store.claim_next_job("test", 0)
    assert job.id == job_id
    return JobContext(store, job, "cpu", threading.Event(), ResidentPool(capacity=1))


def _broken_record(*_a, **_k):
    raise OSError("disk full while writing the merge's stats")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["merge", "merge+evaluate"])
def test_a_failure_while_recording_closes_the_merge_record(
    tmp_path, home, tiny_llama_family, zoo_tasks, monkeypatch, kind
):
    base, cks = tiny_llama_family
    params = {"recipe_yaml": _recipe(base, cks, "task_arithmetic")}
    if kind == "merge":
        params["output"] = str(tmp_path / "out")
        run = kinds.run_merge_job
    else:
        params.update(suite="zoo", zoo_root=str(zoo_tasks))
        run = kinds.run_merge_evaluate_job
    monkeypatch.setattr(kinds, "record_outcome", _broken_record)
    with Store(tmp_path / "db.duckdb") as store:
        ctx = _context(store, kind, params)
        with pytest.raises(OSError, match="disk full"):
            run(ctx, ctx.params)
        merges = store.merges_df()
        assert list(merges.status) == ["failed"] and "disk full" in merges.error.iloc[0]
