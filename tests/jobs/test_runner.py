"""The runner's queue mechanics, with small job kinds registered by the test (the real kinds are tested
in test_kinds.py and test_study.py)."""

import os
import threading
import time

import pytest

from jobs import JobError, JobRunner, register_kind
from store import Store


def _sum_kind(ctx, params):
    ctx.progress(0.5, "adding", force=True)
    ctx.log(f"adding {params['a']} + {params['b']}")
    ctx.store.put_eval_rows(
        [
            dict(
                fingerprint=f"fp{params['a']}",
                suite="s",
                suite_version="v",
                task="t",
                metric="acc",
                value=params["a"] + params["b"],
            )
        ]
    )
    return {"sum": params["a"] + params["b"]}


def _validate_sum(params):
    if not isinstance(params.get("a"), int) or not isinstance(params.get("b"), int):
        raise JobError("test-sum needs integer a and b")
    return params


def _until_cancelled(ctx, params):
    out = os.path.join(params["dir"], "partial.bin")
    ctx.add_temp_path(out)
    with open(out, "wb") as fh:
        fh.write(b"x")
    started = time.monotonic()
    while time.monotonic() - started < 30:
        ctx.check_cancel()
        time.sleep(0.02)
    return None


def _fails(ctx, params):
    if params.get("bug"):
        raise KeyError("boom")
    raise JobError("the checkpoint list is empty")


register_kind("test-sum", _sum_kind, validate=_validate_sum)
register_kind("test-wait", _until_cancelled)
register_kind("test-fail", _fails)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "db.duckdb") as s:
        yield s


def test_jobs_from_many_threads_all_finish(store):
    runner = JobRunner(store, devices=["cpu", "cpu"])
    ids, lock = [], threading.Lock()

    def submit(t):
        for i in range(5):
            jid = runner.submit("test-sum", {"a": 10 * t + i, "b": 1})
            with lock:
                ids.append(jid)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    records = runner.wait(ids, timeout=30)
    runner.shutdown()
    assert sorted(r.result["sum"] for r in records) == sorted(
        10 * t + i + 1 for t in range(4) for i in range(5)
    )
    assert {r.status for r in records} == {"done"} and all(r.progress == 1.0 for r in records)
    assert store.count("eval_rows") == 20
    assert "adding" in records[0].log and records[0].log.rstrip().endswith("done")


def test_bad_requests_are_refused_at_submit(store):
    runner = JobRunner(store, start=False)
    with pytest.raises(JobError, match="Unknown job kind 'mrege'"):
        runner.submit("mrege", {})
    with pytest.raises(JobError, match="integer a and b"):
        runner.submit("test-sum", {"a": "1"})
    assert store.count("jobs") == 0


def test_cancel_running_job_removes_its_temp_output(store, tmp_path):
    runner = JobRunner(store)
    jid = runner.submit("test-wait", {"dir": str(tmp_path)})
    deadline = time.monotonic() + 10
    while not (tmp_path / "partial.bin").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    assert runner.cancel(jid) == "running"
    (record,) = runner.wait([jid], timeout=10)
    runner.shutdown()
    assert record.status == "cancelled" and time.monotonic() - t0 < 5
    assert not (tmp_path / "partial.bin").exists()


def test_failed_job_keeps_message_and_can_be_retried(store):
    runner = JobRunner(store)
    user = runner.submit("test-fail", {})
    bug = runner.submit("test-fail", {"bug": True})
    a, b = runner.wait([user, bug], timeout=10)
    assert (a.status, a.error) == ("failed", "the checkpoint list is empty")
    assert b.error == "KeyError: 'boom'" and "Traceback" in b.log
    runner.retry(user)
    (again,) = runner.wait([user], timeout=10)
    runner.shutdown()
    assert again.attempt == 2 and again.status == "failed" and "--- retry after failed" in again.log


def test_restart_marks_dead_process_jobs_interrupted(store, tmp_path):
    partial = tmp_path / "half-merge"
    partial.mkdir()
    (partial / "model-00001.safetensors").write_bytes(b"x")
    jid = store.add_job("merge", {})
    store.claim_next_job("someone-else", 2**22 + 12345)  # a pid that does not exist
    store.set_job_temp_paths(jid, [str(partial)])
    mid = store.begin_merge(
        recipe_yaml="y", method="ties", base_fingerprint="b", checkpoint_refs=["c"], job_id=jid
    )
    runner = JobRunner(store, start=False)
    runner.start()
    runner.shutdown()
    job = store.get_job(jid)
    assert runner.recovered == [jid] and job.status == "interrupted" and "ended before" in job.error
    assert not partial.exists() and job.temp_paths == []
    assert store.get_merge(mid)["status"] == "interrupted"


def test_job_of_live_runner_in_this_process_is_left_alone(store):
    first = JobRunner(store, start=False)
    jid = store.add_job("test-wait", {"dir": "."})
    store.claim_next_job(first.owner, first.pid)
    second = JobRunner(store, start=False)
    assert second.recover() == []
    first.shutdown()
    assert second.recover() == [jid]


def test_cancel_queued_job_never_runs(store):
    runner = JobRunner(store, start=False)
    jid = runner.submit("test-sum", {"a": 1, "b": 2})
    assert runner.cancel(jid) == "cancelled"
    runner.start()
    time.sleep(0.3)
    runner.shutdown()
    assert store.get_job(jid).status == "cancelled" and store.count("eval_rows") == 0
