"""SIGKILL in the middle of a study, then a restart: nothing finished is lost, nothing is duplicated."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import JobRunner
from store import Store

ROOT = Path(__file__).resolve().parents[2]


def _cli(db, base, cks, zoo_root):
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
    ]


@pytest.mark.slow
def test_sigkill_mid_study_then_resume(tmp_path, home, tiny_llama_family, zoo_tasks):
    base, cks = tiny_llama_family
    db = tmp_path / "db.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        _cli(db, base, cks, zoo_tasks),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    merged_lines = []
    for line in proc.stdout:
        if ": mean " in line:
            merged_lines.append(line)
            if len(merged_lines) == 2:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and len(merged_lines) == 2

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
        assert set(store.merges_df().status) <= {"done", "interrupted"}

    done = subprocess.run(_cli(db, base, cks, zoo_tasks), cwd=ROOT, env=env, capture_output=True, text=True)
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
        statuses = sorted(store.jobs_df().status)
        assert statuses == ["done", "interrupted"]


def _version_and_limit(store):
    row = store.table("eval_rows").iloc[0]
    return row.suite_version, None
