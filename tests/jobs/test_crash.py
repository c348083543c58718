"""SIGKILL in the middle of a study, then a restart: nothing finished is lost, nothing is duplicated."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import JobRunner
from jobs.runner import pid_alive
from merging.sinks import TMP_MARK
from store import Store

ROOT = Path(__file__).resolve().parents[2]


def _cli(db, base, cks, zoo_root, save: bool = False):
    return [
        sys.executable,
        "-m",
        "jobs",
        "study",
        "--db",
        str(db),
        "--base",
        str(base),
        "--pool",
        ",".join(map(str, cks)),
        "--methods",
        "task_arithmetic,ties,model_stock",
        "--sizes",
        "2,3",
        "--subsets",
        "3",
        "--suite",
        "zoo",
        "--zoo-root",
        str(zoo_root),
        "--seed",
        "0",
        *(["--save-merges"] if save else []),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("save", [False, True], ids=["in-memory", "save-merges"])
def test_sigkill_mid_study_then_resume(tmp_path, home, tiny_llama_family, zoo_tasks, save):
    base, cks = tiny_llama_family
    db = tmp_path / "db.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        _cli(db, base, cks, zoo_tasks, save),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    merged_lines, worker_pid = [], None
    for line in proc.stdout:
        if "worker pid" in line:
            worker_pid = int(re.search(r"worker pid (\d+)", line).group(1))
        if ": mean " in line:
            merged_lines.append(line)
            if len(merged_lines) == 2:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and len(merged_lines) == 2
    # the job's worker process does not outlive the CLI (nothing keeps writing a merge)
    assert worker_pid is not None and worker_pid != proc.pid
    deadline = time.monotonic() + 10
    while pid_alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(worker_pid)

    with Store(db) as store:
        before = store.merges_df(status="done")
        assert len(before) >= 2
        kept = {fp: store.get_eval_rows(fp, *_version_and_limit(store)) for fp in before.merged_fingerprint}
        assert all(kept.values())
        (job,) = store.jobs_with_status("running")
        runner = JobRunner(store, start=False)
        assert runner.recover() == [job.id]
        runner.shutdown()
        assert store.get_job(job.id).status == "interrupted"
        assert "ended before the job finished" in store.get_job(job.id).error
        assert set(store.merges_df().status) <= {"done", "interrupted"}
        assert list(store.studies_df().status) == ["interrupted"]  # not left `running`
        if save:  # only complete, recorded merges remain on disk; no temporary folder
            assert _saved(home) == set(before.output_path)

    done = subprocess.run(
        _cli(db, base, cks, zoo_tasks, save), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with Store(db) as store:
        merges = store.merges_df()
        # 3 subsets of 2 (all of them) + 1 of 3, times 3 configurations
        assert len(merges) == 12 and set(merges.status) == {"done"}
        assert merges[["subset_id", "config"]].drop_duplicates().shape[0] == 12
        assert store.count("eval_rows") == 4 + 12  # base, 3 checkpoints, 12 merges; one task each
        assert store.count("model_stats") == 12
        for fp, rows in kept.items():
            assert store.get_eval_rows(fp, *_version_and_limit(store)) == rows
        assert list(store.studies_df().status) == ["done"]
        statuses = sorted(store.jobs_df().status)
        assert statuses == ["done", "interrupted"]
        if save:
            assert _saved(home) == set(merges.output_path) and len(_saved(home)) == 12
            assert all((Path(p) / "config.json").exists() for p in merges.output_path)
        else:
            assert not (home / "merges").exists()


def _saved(home: Path) -> set[str]:
    """The folders under the workspace's merges/ (a temporary folder would show up here too)."""
    root = home / "merges"
    found = {str(p) for p in root.glob("*/*")} | {str(p) for p in root.glob("*/.*")}
    assert not [p for p in found if TMP_MARK in p], found
    return found


def _version_and_limit(store):
    row = store.table("eval_rows").iloc[0]
    return row.suite_version, None


@pytest.mark.slow
def test_ctrl_c_of_the_cli_cancels_the_study_cleanly(tmp_path, home, tiny_llama_family, zoo_tasks):
    """SIGINT to the process group (the CLI and its worker), as Ctrl-C sends: cancelled, not crashed."""
    base, cks = tiny_llama_family
    db = tmp_path / "db.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        _cli(db, base, cks, zoo_tasks, save=True),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    for line in proc.stdout:
        if ": mean " in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "study cancelled" in err, err[-2000:]
    with Store(db) as store:
        (job,) = store.jobs_df().itertuples()
        assert job.status == "cancelled"
        assert list(store.studies_df().status) == ["cancelled"]
        assert set(store.merges_df().status) <= {"done", "cancelled"}
        assert store.jobs_with_status("running") == []
    assert not [p for p in (home / "merges").rglob("*") if TMP_MARK in p.name]
