"""A worker never re-runs the parent's __main__ script: under Streamlit that is app.py, and running it in a
worker opened the app's DuckDB file and killed every worker at start."""

from __future__ import annotations

import sys
import types

from jobs import JobRunner
from store import Store
from tests.jobs.test_runner import _sum_kind  # noqa: F401  (registers the test-sum kind)


def test_worker_starts_when_main_is_a_script_that_must_not_run_again(tmp_path, monkeypatch):
    marker = tmp_path / "main-ran"
    script = tmp_path / "app_like.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(1)\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    db = Store(tmp_path / "db.duckdb")
    runner = JobRunner(db, workers=1)
    try:
        (job,) = runner.wait([runner.submit("test-sum", {"a": 2, "b": 3})], timeout=120)
    finally:
        runner.shutdown()
        db.close()
    assert job.status == "done", job.error
    assert not marker.exists(), "the worker ran the parent's __main__ script"
    assert fake_main.__file__ == str(script)  # restored after the start
