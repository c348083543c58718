"""The same small study on the Ray backend stores the same results as on threads."""

import pytest

from jobs import JobRunner
from store import Store


def _run(db, params):
    with Store(db) as store:
        runner = JobRunner(store)
        (job,) = runner.wait([runner.submit("study", params)], timeout=600)
        runner.shutdown()
        assert job.status == "done", job.error
        res = store.study_results_df(job.params["study_id"])
        scores = store.eval_rows_df()
        return (
            {(r.config, r.subset_id, r.task): (r.value, r.merged_fingerprint) for r in res.itertuples()},
            {(r.fingerprint, r.task): r.value for r in scores.itertuples()},
            store.merges_df()[["config", "subset_id", "merged_fingerprint"]].sort_values(
                ["config", "subset_id"]
            ),
        )


@pytest.mark.slow
def test_ray_study_matches_threads(tmp_path, home, tiny_llama_family, zoo_tasks):
    ray = pytest.importorskip("ray")
    base, cks = tiny_llama_family
    params = dict(
        base=str(base),
        pool=[str(c) for c in cks],
        methods=["task_arithmetic", "ties"],
        sizes=[2, 3],
        subsets=2,
        seed=5,
        suite="zoo",
        zoo_root=str(zoo_tasks),
    )
    local = _run(tmp_path / "threads.duckdb", params)
    try:
        remote = _run(tmp_path / "ray.duckdb", {**params, "backend": "ray", "ray_num_cpus": 2})
    finally:
        ray.shutdown()
    assert len(local[0]) == 6  # 2 subsets of 2 + 1 of 3, two configurations, one task
    assert remote[0].keys() == local[0].keys()
    for key, (value, fp) in local[0].items():
        assert remote[0][key][1] == fp and remote[0][key][0] == pytest.approx(value, abs=1e-9)
    assert remote[1].keys() == local[1].keys() and len(local[1]) == 4 + 6
    for key, value in local[1].items():
        assert remote[1][key] == pytest.approx(value, abs=1e-9)
    assert remote[2].reset_index(drop=True).equals(local[2].reset_index(drop=True))
