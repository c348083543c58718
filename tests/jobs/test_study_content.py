"""Studies by content: a study resumed after one of its checkpoints changed re-runs exactly the units that
used it, marks the old ones superseded and serves nothing stale; every way a local study's merge can fail
closes its merge record (no row stays `running`)."""

from __future__ import annotations

import shutil
import threading

import pytest

from jobs import JobRunner
from jobs import study_run as study_run_module
from jobs.context import JobContext
from jobs.errors import JobCancelled
from jobs.resident import ResidentPool
from merging import MergeError, open_checkpoint
from merging.checkpoint import read_safetensors_header
from store import Store


def _copy_family(tiny_llama_family, root):
    base, cks = tiny_llama_family
    base = shutil.copytree(base, root / "base")
    return base, [shutil.copytree(c, root / f"ck{i}") for i, c in enumerate(cks)]


def _params(base, cks, zoo_tasks):
    return {
        "base": str(base),
        "pool": [str(c) for c in cks],
        "methods": ["task_arithmetic"],
        "sizes": [2],
        "subsets": 3,
        "seed": 0,
        "suite": "zoo",
        "zoo_root": str(zoo_tasks),
    }


def _flip_byte_three_quarters_in(ck, tensor="model.layers.0.mlp.up_proj.weight"):
    info = read_safetensors_header(ck / "model.safetensors")[tensor]
    offset = info.offset + (info.nbytes * 3) // 4
    with open(ck / "model.safetensors", "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))


def _run(store, params):
    runner = JobRunner(store, devices=["cpu"])
    try:
        (record,) = runner.wait([runner.submit("study", params)], timeout=600)
    finally:
        runner.shutdown()
    assert record.status == "done", record.error
    return record


@pytest.mark.slow
def test_study_resumed_after_a_checkpoint_changed_reruns_what_changed(
    tmp_path, home, tiny_llama_family, zoo_tasks
):
    base, cks = _copy_family(tiny_llama_family, tmp_path)
    params = _params(base, cks, zoo_tasks)
    with Store(tmp_path / "db.duckdb") as store:
        first = _run(store, params)
        sid = first.result["study_id"]
        before = {m["subset_id"]: m for m in store.find_study_merges(sid)}
        assert len(before) == 3 and {m["status"] for m in before.values()} == {"done"}
        old_fp = open_checkpoint(cks[2]).fingerprint
        version = store.table("eval_rows").suite_version.iloc[0]

        _flip_byte_three_quarters_in(cks[2])
        new_fp = open_checkpoint(cks[2]).fingerprint
        assert new_fp != old_fp
        assert store.get_eval_rows(new_fp, version, None) == []  # the changed copy has no scores yet

        second = _run(store, params)
        assert second.result["study_id"] == sid  # the same study, resumed
        assert second.result["ran"] == 1 + 2  # the changed checkpoint alone, and the two merges using it
        assert store.get_eval_rows(new_fp, version, None)  # scored under its own fingerprint

        after = {m["subset_id"]: m for m in store.find_study_merges(sid)}
        assert len(after) == 3 and {m["status"] for m in after.values()} == {"done"}
        touched = {sid_ for sid_, m in before.items() if str(cks[2]) in m["checkpoint_refs"]}
        assert len(touched) == 2
        for subset_id, merge in after.items():
            assert (merge["id"] == before[subset_id]["id"]) == (subset_id not in touched)
            fps = [open_checkpoint(c).fingerprint for c in merge["checkpoint_refs"]]
            assert merge["checkpoint_fingerprints"] == fps  # nothing made from the old bytes is live

        every = store.find_study_merges(sid, include_superseded=True)
        superseded = [m for m in every if m["superseded_at"] is not None]
        assert sorted(m["id"] for m in superseded) == sorted(before[s]["id"] for s in touched)
        assert all(old_fp in m["checkpoint_fingerprints"] for m in superseded)
        results = store.study_results_df(sid)
        assert set(results.merge_id) == {m["id"] for m in after.values()}
        assert len(store.merges_df(study_id=sid)) == 3
        assert store.get_study(sid)["inputs"][str(cks[2])] == new_fp


# --- every failure path closes the merge record --------------------------------------------------------


def _context(store, params):
    job_id = store.add_job("study", params)
    job = store.claim_next_job("test", 0)
    assert job.id == job_id
    return JobContext(store, job, "cpu", threading.Event(), ResidentPool(capacity=1))


def _fail_second_merge(monkeypatch, exc):
    """Fault injection: the real merge-and-score runs for the first unit, the second raises `exc`."""
    real = study_run_module.merge_and_score_resident
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(study_run_module, "merge_and_score_resident", flaky)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (MergeError("refused: NaN in the merged tensor"), "failed"),  # the study goes on, then fails
        (RuntimeError("CUDA out of memory"), "failed"),
        (MemoryError(), "failed"),
        (ValueError("lm-eval could not read the task"), "failed"),
        (JobCancelled("job cancelled"), "cancelled"),
        (KeyboardInterrupt(), "failed"),
    ],
    ids=["merge-error", "oom", "memory-error", "evaluation-error", "cancel", "interrupt"],
)
def test_every_failure_of_a_study_merge_closes_its_record(
    tmp_path, home, tiny_llama_family, zoo_tasks, monkeypatch, exc, status
):
    base, cks = tiny_llama_family
    _fail_second_merge(monkeypatch, exc)
    with Store(tmp_path / "db.duckdb") as store:
        ctx = _context(store, _params(base, cks, zoo_tasks))
        with pytest.raises(BaseException):  # noqa: B017 - each path ends the job its own way
            study_run_module.run_study(ctx, ctx.params)
        merges = store.merges_df()
        assert "running" not in set(merges.status)
        expected = ["done", status] + (["done"] if isinstance(exc, MergeError) else [])
        assert sorted(merges.status) == sorted(expected)


@pytest.mark.slow
def test_a_failure_while_recording_the_outcome_closes_the_record(
    tmp_path, home, tiny_llama_family, zoo_tasks, monkeypatch
):
    base, cks = tiny_llama_family

    def broken_record(*_a, **_k):
        raise OSError("disk full while writing the merge's stats")

    monkeypatch.setattr(study_run_module, "record_outcome", broken_record)
    with Store(tmp_path / "db.duckdb") as store:
        ctx = _context(store, _params(base, cks, zoo_tasks))
        with pytest.raises(OSError, match="disk full"):
            study_run_module.run_study(ctx, ctx.params)
        merges = store.merges_df()
        assert list(merges.status) == ["failed"]
        assert "disk full" in merges.error.iloc[0]


@pytest.mark.slow
def test_a_failure_preparing_the_saved_folder_closes_the_record(
    tmp_path, home, tiny_llama_family, zoo_tasks, monkeypatch
):
    base, cks = tiny_llama_family

    def unwritable(*_a, **_k):
        raise PermissionError("merges/ is read-only")

    monkeypatch.setattr(study_run_module, "saved_merge_dir", unwritable)
    with Store(tmp_path / "db.duckdb") as store:
        ctx = _context(store, {**_params(base, cks, zoo_tasks), "save_merges": True})
        with pytest.raises(PermissionError):
            study_run_module.run_study(ctx, ctx.params)
        assert list(store.merges_df().status) == ["failed"]
