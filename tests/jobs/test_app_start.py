"""The job runner starts with the app, not with the first page a visitor opens: queued jobs run and jobs a
dead process left running are marked interrupted as soon as the server is up, with no browser attached."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from store import Store

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed_workspace(home: Path, base, cks, out: Path) -> tuple[str, str, Path]:
    """A queued merge job, and a job that a process which no longer exists left running with a
    half-written temporary folder."""
    partial = home / "merges" / ".half.mergelab-tmp-1-x"
    partial.mkdir(parents=True)
    (partial / "model-00001.safetensors").write_bytes(b"half")
    recipe = yaml.safe_dump(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [{"model": str(c), "parameters": {"weight": 0.5}} for c in cks],
        }
    )
    with Store(home / "mergelab.duckdb") as store:
        dead = store.add_job("merge", {"recipe_yaml": recipe})
        store.claim_next_job("a-dead-app", 2**22 + 4321)  # a pid that does not exist
        store.set_job_temp_paths(dead, [str(partial)])
        queued = store.add_job("merge", {"recipe_yaml": recipe, "output": str(out)})
    return dead, queued, partial


@pytest.mark.slow
def test_server_start_runs_queued_jobs_and_recovers_dead_ones(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    home = tmp_path / "home"
    out = tmp_path / "merged"
    dead, queued, partial = _seed_workspace(home, base, cks, out)
    env = {**os.environ, "MERGELAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "ui.serve", "--server.headless", "true", "--server.port", str(_free_port())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "config.json").exists() and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()[-2000:]
            time.sleep(0.2)
        assert (out / "config.json").exists(), "the queued merge never ran"
        time.sleep(1.0)  # let the runner record the outcome
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert f"job {dead} was left running" in output
    with Store(home / "mergelab.duckdb") as store:
        assert store.get_job(dead).status == "interrupted" and not partial.exists()
        assert store.get_job(queued).status == "done"
        assert store.jobs_with_status("running") == []


def test_app_script_starts_the_runner_on_its_first_run(tmp_path, monkeypatch, tiny_llama_family):
    """`streamlit run app.py` (no launcher): whichever page the first visitor opens, the runner runs."""
    from streamlit.testing.v1 import AppTest

    base, cks = tiny_llama_family
    home = tmp_path / "home"
    out = tmp_path / "merged"
    dead, queued, partial = _seed_workspace(home, base, cks, out)
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("app_pages/results.py").run()  # a page that does not itself ask for the runner

    from ui import session

    runner = session.get_runner()
    assert runner.recovered == [dead] and not partial.exists()
    (record,) = runner.wait([queued], timeout=180)
    assert record.status == "done", record.error
    runner.shutdown()
