"""Jobs run in a supervised worker process: a crash or an OOM kill fails the job and leaves the runner
serving; a job that ignores cancellation is terminated; a running evaluation stops within seconds; no
failure path leaves a `running` row behind."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

import tests.jobs.worker_kinds  # noqa: F401  (registers the test-* kinds used here)
from jobs import JobRunner
from merging.sinks import TMP_MARK
from store import Store
from tests.tiny_tasks import tiny_rows, write_task_folder


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "db.duckdb") as s:
        yield s


def _recipe(base, cks, method="task_arithmetic") -> str:
    return yaml.safe_dump(
        {
            "merge_method": method,
            "base_model": str(base),
            "models": [{"model": str(c), "parameters": {"weight": 0.5}} for c in cks],
        }
    )


def _wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _no_running_rows(store: Store) -> None:
    assert store.jobs_with_status("running") == []
    assert len(store.merges_df(status="running")) == 0


def test_job_runs_in_a_worker_process_with_the_apps_environment(store, home):
    runner = JobRunner(store)
    try:
        first, second = runner.wait([runner.submit("test-hello", {}) for _ in range(2)], timeout=120)
    finally:
        runner.shutdown()
    assert first.status == second.status == "done", first.error
    assert first.result["pid"] != os.getpid() and first.result["pid"] == second.result["pid"]
    assert first.result["home"] == str(home)  # MERGELAB_HOME of the app at the time of the job


def test_prewarmed_worker_is_ready_before_the_first_job(store, home):
    runner = JobRunner(store)
    try:
        runner.prewarm()
        (pid,) = _wait_for(runner.worker_pids, timeout=60, what="the prewarmed worker")
        (record,) = runner.wait([runner.submit("test-hello", {})], timeout=60)
    finally:
        runner.shutdown()
    assert record.status == "done" and record.result["pid"] == pid


@pytest.mark.slow
def test_worker_killed_mid_write_fails_the_job_and_a_fresh_worker_runs_the_next(
    store, home, tmp_path, tiny_llama_family
):
    base, cks = tiny_llama_family
    out = tmp_path / "merges" / "slow"
    runner = JobRunner(store)
    try:
        jid = runner.submit("test-slow-merge", {"recipe_yaml": _recipe(base, cks), "output": str(out)})
        _wait_for(lambda: "writing tensor 2" in runner.get(jid).message, what="the merge to be writing")
        (victim,) = runner.worker_pids()
        assert runner.get(jid).temp_paths  # the temporary folder is declared while it is written
        os.kill(victim, signal.SIGKILL)
        (record,) = runner.wait([jid], timeout=30)
        after = runner.wait([runner.submit("test-hello", {})], timeout=120)[0]
    finally:
        runner.shutdown()
    assert record.status == "failed"
    assert record.error.startswith(
        "worker process died (signal 9, likely out of memory) while writing tensor"
    )
    assert not out.exists() and [p.name for p in out.parent.iterdir() if TMP_MARK in p.name] == []
    assert record.temp_paths == [] and "removed temporary output" in record.log
    assert after.status == "done" and after.result["pid"] != victim
    _no_running_rows(store)
    assert set(store.merges_df().status) == {"interrupted"}


def test_job_ignoring_cancel_is_terminated_after_the_grace_period(store, home, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGELAB_CANCEL_GRACE_S", "1")
    runner = JobRunner(store)
    try:
        jid = runner.submit("test-stubborn", {"dir": str(tmp_path)})
        _wait_for(lambda: runner.get(jid).message == "ignoring everyone", what="the job to start")
        (pid,) = runner.worker_pids()
        t0 = time.monotonic()
        runner.cancel(jid)
        (record,) = runner.wait([jid], timeout=30)
        stopped = time.monotonic() - t0
        after = runner.wait([runner.submit("test-hello", {})], timeout=120)[0]
    finally:
        runner.shutdown()
    assert record.status == "cancelled" and "did not stop within 1 s" in record.message
    assert 1 <= stopped < 10
    assert not (tmp_path / "stubborn.part").exists()
    assert after.status == "done" and after.result["pid"] != pid
    _no_running_rows(store)


def test_job_calling_the_store_nonstop_is_still_terminated(store, home, monkeypatch):
    monkeypatch.setenv("MERGELAB_CANCEL_GRACE_S", "1")
    runner = JobRunner(store)
    try:
        jid = runner.submit("test-chatty", {})
        _wait_for(lambda: runner.get(jid).message == "chatting", what="the job to start")
        runner.cancel(jid)
        (record,) = runner.wait([jid], timeout=30)
    finally:
        runner.shutdown()
    assert record.status == "cancelled" and "did not stop within 1 s" in record.message
    _no_running_rows(store)


@pytest.mark.slow
def test_cancelling_a_running_evaluation_stops_it_within_5_s(
    store, home, tmp_path, monkeypatch, tiny_llama_family
):
    monkeypatch.setenv("MERGELAB_CANCEL_GRACE_S", "60")  # the stop must be cooperative, not a kill
    base, _ = tiny_llama_family
    zoo = write_task_folder(tmp_path / "zoo", {"add": tiny_rows("add", operands=(60, 60))})  # 3600 items
    runner = JobRunner(store)
    try:
        jid = runner.submit("evaluate", {"model": str(base), "suite": "zoo", "zoo_root": str(zoo)})
        _wait_for(lambda: runner.get(jid).message.startswith("scoring"), timeout=120, what="scoring")
        time.sleep(1.0)  # lm-eval is building requests and running batches
        t0 = time.monotonic()
        assert runner.cancel(jid) == "running"
        (record,) = runner.wait([jid], timeout=30)
        stopped = time.monotonic() - t0
    finally:
        runner.shutdown()
    assert record.status == "cancelled" and record.message == "cancelled"
    assert stopped < 5, f"took {stopped:.1f} s"
    assert store.count("eval_rows") == 0
    _no_running_rows(store)


@pytest.mark.slow
def test_scoring_failure_after_a_merge_leaves_no_running_row(store, home, tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    zoo = write_task_folder(tmp_path / "zoo", {"add": tiny_rows("add")})
    (zoo / "tasks" / "zoo_add.jsonl").write_text("{not json\n")
    runner = JobRunner(store)
    try:
        jid = runner.submit(
            "merge+evaluate", {"recipe_yaml": _recipe(base, cks), "suite": "zoo", "zoo_root": str(zoo)}
        )
        (record,) = runner.wait([jid], timeout=180)
    finally:
        runner.shutdown()
    assert record.status == "failed" and record.error
    merges = store.merges_df()
    assert list(merges.status) == ["failed"]
    _no_running_rows(store)


def test_results_that_cannot_be_recorded_fail_the_job_and_the_runner_goes_on(store, home):
    runner = JobRunner(store)
    try:
        keys, unpicklable = runner.wait(
            [runner.submit("test-tuple-keys", {}), runner.submit("test-unpicklable", {})], timeout=120
        )
        after = runner.wait([runner.submit("test-hello", {})], timeout=60)[0]
    finally:
        runner.shutdown()
    assert keys.status == "failed" and keys.error.startswith("could not record the job as done: TypeError")
    assert unpicklable.status == "failed" and "cannot be sent back to the app" in unpicklable.error
    assert after.status == "done"
    _no_running_rows(store)


def test_a_run_function_must_be_module_level():
    from jobs import JobError, register_kind

    with pytest.raises(JobError, match="module-level"):
        register_kind("test-lambda", lambda ctx, params: None)


@pytest.mark.slow
def test_cancelling_a_study_mid_unit_closes_the_study_and_its_merge(
    store, home, tiny_llama_family, zoo_tasks
):
    base, cks = tiny_llama_family
    params = {
        "base": str(base),
        "pool": [str(c) for c in cks],
        "methods": ["task_arithmetic", "ties"],
        "sizes": [2, 3],
        "subsets": 3,
        "suite": "zoo",
        "zoo_root": str(zoo_tasks),
    }
    runner = JobRunner(store)
    try:
        jid = runner.submit("study", params)
        _wait_for(lambda: len(store.merges_df()) >= 2, timeout=300, what="the study's second merge")
        t0 = time.monotonic()
        runner.cancel(jid)
        (record,) = runner.wait([jid], timeout=60)
        stopped = time.monotonic() - t0
    finally:
        runner.shutdown()
    assert record.status == "cancelled" and stopped < 5, (record.status, stopped)
    assert list(store.studies_df().status) == ["cancelled"]
    assert set(store.merges_df().status) <= {"done", "cancelled"}
    _no_running_rows(store)


EXIT_WITH_RUNNING_JOB = """
import sys, time
import tests.jobs.worker_kinds
from jobs import JobRunner
from store import Store
runner = JobRunner(Store(sys.argv[1]))
jid = runner.submit("test-slow-merge", {"recipe_yaml": sys.argv[2], "output": sys.argv[3], "pause": 0.5})
while "writing" not in runner.get(jid).message:
    time.sleep(0.05)
print(jid, flush=True)
"""


@pytest.mark.slow
def test_process_exit_with_a_running_job_cancels_it_cleanly(tmp_path, home, tiny_llama_family):
    """The runner's exit hook runs before multiprocessing's (which would kill the worker first and leave
    'worker process died (signal 15)')."""
    import subprocess
    import sys
    from pathlib import Path

    base, cks = tiny_llama_family
    out = tmp_path / "merged"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            EXIT_WITH_RUNNING_JOB,
            str(tmp_path / "db.duckdb"),
            _recipe(base, cks),
            str(out),
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with Store(tmp_path / "db.duckdb") as store:
        record = store.get_job(done.stdout.split()[0])
        assert (record.status, record.error) == ("cancelled", None)
        _no_running_rows(store)
    assert not out.exists() and [p for p in tmp_path.iterdir() if TMP_MARK in p.name] == []
