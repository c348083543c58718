"""The "analyse" job on tiny real models: validated at submit, run by the real runner, recorded in the store
like a merge's stats (and nowhere else: no merge record, no files)."""

import pytest

from jobs import JobError, JobRunner
from store import Store


def test_analyse_job_records_the_analysis(tmp_path, home, tiny_llama_family):
    base, cks = tiny_llama_family
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, devices=["cpu"])
        try:
            jid = runner.submit("analyse", {"base": str(base), "checkpoints": [str(c) for c in cks]})
            (job,) = runner.wait([jid], timeout=120)
        finally:
            runner.shutdown()
        assert job.status == "done", job.error
        aid = job.result["analysis_id"]
        row = store.get_analysis(aid)
        assert row["checkpoint_refs"] == [str(c) for c in cks] and row["job_id"] == jid
        assert row["summary"]["most_conflicting"][0] == job.result["most_conflicting"][0]
        assert len(row["summary"]["layers"]) == 5  # embed, 2 decoder layers, final norm, head
        stats = store.tensor_stats_df(aid)
        assert len(stats) == 21 and stats["delta_norm"].isna().all()
        assert (stats["sign_conflict"] > 0).any()
        assert set(store.spectra_df(aid)["source"]) == {"task"}
        assert store.merges_df().empty  # an analysis is not a merge
        assert set(store.models_df()["kind"]) == {"base", "checkpoint"}  # inputs registered
        assert "analysis analysis-" in job.log
    assert not (home / "merges").exists()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"checkpoints": ["a"]}, "needs base"),
        ({"base": "b"}, "needs checkpoints"),
        ({"base": "b", "checkpoints": "a"}, "needs checkpoints"),
        ({"base": "b", "checkpoints": ["a", "a"]}, "listed twice"),
        ({"base": "b", "checkpoints": ["b", "a"]}, "base is also listed"),
        ({"base": "b", "checkpoints": ["a"], "spectra": "some"}, "spectra must be"),
    ],
)
def test_bad_requests_are_refused_at_submit(tmp_path, params, message):
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, devices=["cpu"], start=False)
        with pytest.raises(JobError, match=message):
            runner.submit("analyse", params)
        assert store.count("jobs") == 0


def test_unreadable_checkpoint_fails_the_job_with_one_line(tmp_path, home, tiny_llama_family):
    base, _ = tiny_llama_family
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, devices=["cpu"])
        try:
            jid = runner.submit("analyse", {"base": str(base), "checkpoints": [str(tmp_path / "nope")]})
            (job,) = runner.wait([jid], timeout=60)
        finally:
            runner.shutdown()
        assert job.status == "failed" and "not found" in job.error
        assert store.count("analyses") == 0
