"""A study's units on a local process pool: how many processes, the same stored results as the in-job path,
and a cancel that stops the units in flight and leaves no merge record running."""

from __future__ import annotations

import re
import time

import pytest

from jobs import JobRunner
from jobs.errors import JobError
from jobs.study_pool import parse_processes, study_processes
from store import Store


def test_processes_parameter():
    assert parse_processes(None) is None and parse_processes("auto") is None
    assert parse_processes(3) == 3 and parse_processes("2") == 2
    for bad in (0, -1, "two", 1.5, True, ""):
        with pytest.raises(JobError, match="processes must be a positive integer"):
            parse_processes(bad)


def test_how_many_processes(tiny_llama_family, monkeypatch):
    base, _ = tiny_llama_family
    params = {"base": str(base)}
    assert study_processes({**params, "processes": 3}, "cpu") == 3
    # a GPU, saved merges or spectra: unit by unit in the job itself
    assert study_processes({**params, "processes": 3}, "cuda:0") == 1
    assert study_processes({**params, "save_merges": True}, "cpu") == 1
    assert study_processes({**params, "spectra": ["q_proj"]}, "cpu") == 1
    cores = len(__import__("os").sched_getaffinity(0))
    assert study_processes(params, "cpu") == cores  # a tiny base fits any budget many times
    monkeypatch.setenv("MERGELAB_RESIDENT_BUDGET_GB", "0.0000001")  # not even one resident fits
    assert study_processes(params, "cpu") == 1


def _run(db, params):
    with Store(db) as store:
        runner = JobRunner(store)
        try:
            (job,) = runner.wait([runner.submit("study", params)], timeout=600)
        finally:
            runner.shutdown()
        assert job.status == "done", job.error
        results = store.study_results_df(job.params["study_id"])
        merges = store.merges_df()
        assert set(merges.status) == {"done"}
        return (
            {(r.config, r.subset_id, r.task): (r.value, r.merged_fingerprint) for r in results.itertuples()},
            sorted((r.fingerprint, r.task, r.value) for r in store.eval_rows_df().itertuples()),
            job.log,
        )


@pytest.mark.slow
def test_pool_stores_what_the_job_itself_stores(tmp_path, home, tiny_llama_family, zoo_tasks):
    base, cks = tiny_llama_family
    params = dict(
        base=str(base),
        pool=[str(c) for c in cks],
        methods=["task_arithmetic", "ties", "tsvm"],
        sizes=[2, 3],
        subsets=2,
        seed=5,
        suite="zoo",
        zoo_root=str(zoo_tasks),
    )
    in_job = _run(tmp_path / "one.duckdb", {**params, "processes": 1})
    pooled = _run(tmp_path / "two.duckdb", {**params, "processes": 2})
    assert "2 local processes" in pooled[2] and "local processes" not in in_job[2]
    assert len(in_job[0]) == 9  # (2 subsets of 2 + 1 of 3) x 3 configurations, one task
    assert pooled[0] == in_job[0]  # same merged bytes (fingerprints), same scores
    assert pooled[1] == in_job[1]


def _pooled_study(tiny_llama_family, zoo_tasks, seed: int) -> dict:
    """A two-process study of 3 subsets per size: long enough to be stopped in the middle."""
    base, cks = tiny_llama_family
    return dict(
        base=str(base),
        pool=[str(c) for c in cks],
        sizes=[2, 3],
        subsets=3,
        seed=seed,
        suite="zoo",
        zoo_root=str(zoo_tasks),
        processes=2,
    )


def _wait_for_log(runner: JobRunner, job_id: str, reached) -> str:
    """The job's log once `reached(log)` holds (within 5 minutes)."""
    deadline = time.monotonic() + 300
    while not reached(log := runner.get(job_id).log or ""):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    return log


@pytest.mark.slow
def test_cancel_stops_the_pool(tmp_path, home, tiny_llama_family, zoo_tasks):
    params = _pooled_study(tiny_llama_family, zoo_tasks, seed=1)
    with Store(tmp_path / "c.duckdb") as store:
        runner = JobRunner(store)
        try:
            job_id = runner.submit("study", params)
            _wait_for_log(runner, job_id, lambda log: "units to 2 local processes" in log)
            runner.cancel(job_id)
            asked = time.monotonic()
            (job,) = runner.wait([job_id], timeout=120)
            stopped = time.monotonic() - asked
        finally:
            runner.shutdown()
        assert job.status == "cancelled", job.error
        assert stopped < 60
        merges = store.merges_df()
        assert "running" not in set(merges.status)
        assert len(merges) < 8 * 4  # the 8 default configurations on 4 subsets: it stopped before the end


@pytest.mark.slow
def test_a_killed_unit_process_fails_the_study_clearly_and_resume_finishes_it(
    tmp_path, home, tiny_llama_family, zoo_tasks
):
    import os
    import signal

    import psutil

    params = _pooled_study(tiny_llama_family, zoo_tasks, seed=2)
    with Store(tmp_path / "k.duckdb") as store:
        runner = JobRunner(store)
        try:
            job_id = runner.submit("study", params)
            log = _wait_for_log(runner, job_id, lambda log: " done" in log or "scored" in log)
            worker = int(re.search(r"worker pid (\d+)", log).group(1))
            units = [p for p in psutil.Process(worker).children() if "spawn" in " ".join(p.cmdline())]
            os.kill(units[0].pid, signal.SIGKILL)
            (job,) = runner.wait([job_id], timeout=300)
            assert job.status == "failed" and "a study process died" in job.error, job.error
            assert "running" not in set(store.merges_df().status)
            (again,) = runner.wait([runner.submit("study", params)], timeout=600)
        finally:
            runner.shutdown()
        assert again.status == "done", again.error
        merges = store.merges_df()
        done = merges[merges.status == "done"]
        assert len(done) == 8 * 4 and not done.duplicated(["config", "subset_id"]).any()
