"""The Jobs page: launches grouped with the jobs they queued, durations and headline results, pages of
launches, logs read only when opened, and a long-running server whose connections and memory stay flat."""

from __future__ import annotations

import gc
import os

import pytest

from tests.app.conftest import app_test, errors_of


def _finished(db, kind, params, *, result=None, status="done", group_id=None, log=""):
    job_id = db.add_job(kind, params, group_id=group_id)
    claimed = db.claim_next_job("test", os.getpid(), kinds=[kind])
    assert claimed.id == job_id
    if log:
        db.append_job_log(job_id, log)
    db.finish_job(job_id, status, result=result, error="boom" if status == "failed" else None)
    return job_id


def _texts(at) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption])


@pytest.fixture
def launches(empty_home):
    """One merge launch that queued two reference evaluations, and one evaluation launched alone."""
    from store import Store

    with Store(empty_home / "mergelab.duckdb") as db:
        merge = _finished(
            db,
            "merge+evaluate",
            {"recipe_yaml": "merge_method: ties\n", "suite": "zoo"},
            result={"mean": 0.625},
        )
        _finished(db, "evaluate", {"model": "base", "suite": "zoo"}, result={"mean": 0.5}, group_id=merge)
        _finished(db, "evaluate", {"model": "ck", "suite": "zoo"}, status="failed", group_id=merge)
        alone = _finished(
            db, "evaluate", {"model": "other", "suite": "zoo"}, result={"mean": 0.25}, log="hello"
        )
    return empty_home, merge, alone


def test_jobs_are_grouped_under_their_launch_with_duration_and_result(launches):
    home, merge, alone = launches
    at = app_test(home, "jobs")
    assert errors_of(at) == ["boom"]  # the failed evaluation's error box, nothing else
    text = _texts(at)
    assert "**merge+evaluate** launched" in text and "and 2 job(s) it queued" in text
    assert "mean score 62.5 pp" in text and "mean score 50.0 pp" in text and "mean score 25.0 pp" in text
    assert " s" in text  # every started job shows how long it ran
    ids = [m.value for m in at.markdown if "`" in m.value and "·" in m.value]
    assert [i for i in ids if alone in i] and ids.index(
        next(i for i in ids if alone in i)
    ) == 0  # newest first


def test_logs_are_read_only_for_jobs_whose_log_is_open(launches, monkeypatch):
    home, _, alone = launches
    at = app_test(home, "jobs")
    assert not [c for c in at.code if "hello" in c.value]
    at.toggle(key=f"jobs:log:{alone}").set_value(True).run()
    assert [c for c in at.code if "hello" in c.value]


def test_jobs_page_shows_one_page_of_launches(empty_home):
    from store import Store
    from ui.jobs_view import PAGE_SIZE

    with Store(empty_home / "mergelab.duckdb") as db:
        for i in range(PAGE_SIZE * 2 + 5):
            _finished(db, "evaluate", {"model": f"m{i}", "suite": "zoo"}, result={"mean": i / 100})
    at = app_test(empty_home, "jobs")
    assert errors_of(at) == []
    assert "m44 on suite zoo" in _texts(at) and "m24 on suite zoo" not in _texts(at)
    assert any("Page 1 of 3" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Older").click().run()
    assert "m24 on suite zoo" in _texts(at) and "m44 on suite zoo" not in _texts(at)
    assert any("Page 2 of 3" in c.value for c in at.caption)


@pytest.mark.slow
def test_two_hundred_polls_keep_connections_and_memory_flat(empty_home):
    """Each AppTest run is a rerun on a fresh thread, as a browser's polling is."""
    import psutil

    from store import Store
    from store.db import POOL_SIZE, cursors_open_total

    with Store(empty_home / "mergelab.duckdb") as db:
        for i in range(60):
            _finished(
                db, "evaluate", {"model": f"m{i}", "suite": "zoo"}, result={"mean": 0.5}, log="x" * 2000
            )
    at = app_test(empty_home, "jobs")
    proc = psutil.Process()
    for _ in range(20):  # warm caches, imports and Streamlit's own buffers
        at.run()
    gc.collect()
    cursors, rss = cursors_open_total(), proc.memory_info().rss
    for _ in range(200):
        at.run()
    gc.collect()
    assert errors_of(at) == []
    assert cursors_open_total() == cursors  # no store of this process opened another cursor
    from ui.session import get_store

    assert get_store().cursors_open <= POOL_SIZE  # the app's own store stays within its pool
    grown = proc.memory_info().rss - rss
    assert grown < 64 << 20, f"RSS grew {grown / 2**20:.1f} MiB over 200 polls"
