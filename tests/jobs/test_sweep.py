"""Sweeps: expansion of a hyperparameter axis into study configurations, reading the axis back, bad
requests, and a real sweep on tiny models (threads, and the same results on Ray)."""

import pytest

from jobs import JobError, JobRunner
from jobs.study import PAPER_CONFIGS, build_recipe, paper_config
from jobs.sweep import (
    define_sweep,
    parse_values,
    sweep_axis,
    sweep_configs,
    sweepable_params,
)
from store import Store

POOL = [f"/m/c{i:02d}" for i in range(12)]


def test_lambda_sweep_expands_to_one_paper_configuration_per_value():
    configs = sweep_configs("task_arithmetic", "lambda", [0.2, 0.5, 1.0, 1.5, 2.0])
    assert [c.name for c in configs] == [
        "task_arithmetic lambda=0.2",
        "task_arithmetic lambda=0.5",
        "task_arithmetic lambda=1",
        "task_arithmetic lambda=1.5",
        "task_arithmetic lambda=2",
    ]
    paper = paper_config("task_arithmetic").params  # TA (sum), the literal Eq. 2
    for c, v in zip(configs, [0.2, 0.5, 1.0, 1.5, 2.0], strict=True):
        assert c.method == "task_arithmetic" and c.params == {**paper, "lambda": v}
    recipe = build_recipe(configs[0], "/m/base", POOL[:2], seed=0)
    assert recipe.parameters["lambda"] == 0.2 and recipe.models[0].parameters == {"weight": 1.0}


def test_density_sweep_keeps_the_other_paper_values_and_goes_per_model():
    configs = sweep_configs("ties", "density", [0.1, 1.0])
    assert configs[0].params == {"weight": 1.0, "density": 0.1, "lambda": 1.0}
    recipe = build_recipe(configs[1], "/m/base", POOL[:2], seed=0)
    assert recipe.models[0].parameters == {"weight": 1.0, "density": 1.0}
    assert sweep_configs("ties_sb", "svd_thresh", [0.0, 0.5], fixed={"density": 0.3})[1].params == {
        "weight": 1.0,
        "density": 0.3,
        "lambda": 1.0,
        "svd_thresh": 0.5,
    }


def test_sweep_definition_is_a_study_of_one_size():
    d = define_sweep(
        base="/m/base",
        pool=POOL,
        method="task_arithmetic",
        param="lambda",
        values="0.2,0.5,1,1.5,2",
        n=4,
        subsets=2,
    )
    assert d.sizes == [4] and d.subsets_per_size == 2 and len(d.configs) == 5
    assert d.name == "sweep of lambda for task_arithmetic"
    again = define_sweep(
        base="/m/base",
        pool=POOL,
        method="task_arithmetic",
        param="lambda",
        values=[0.2, 0.5, 1, 1.5, 2],
        n=4,
        subsets=2,
    )
    assert again.study_id == d.study_id  # same sweep, same study: rerunning resumes
    assert define_sweep(
        base="/m/base", pool=POOL, method="task_arithmetic", param="lambda", values="0.2,2", n="all"
    ).sizes == [12]


def test_axis_is_read_back_from_stored_configurations_in_value_order():
    configs = sweep_configs("ties", "density", [0.5, 0.1, 1.0])
    stored = [{"name": c.name, "method": c.method, "params": c.params} for c in configs]
    axis = sweep_axis(stored)
    assert (axis.method, axis.param, axis.values) == ("ties", "density", (0.1, 0.5, 1.0))
    assert axis.value_of()["ties density=0.5"] == 0.5
    assert sweep_axis(configs) == axis
    # an ordinary study is not a sweep
    assert sweep_axis(PAPER_CONFIGS) is None
    assert sweep_axis(configs[:1]) is None
    assert sweep_axis(["task_arithmetic", "ties"]) is None  # stored by name only
    two_params = [
        {"name": "a", "method": "ties", "params": {"density": 0.1, "lambda": 1.0}},
        {"name": "b", "method": "ties", "params": {"density": 0.2, "lambda": 2.0}},
    ]
    assert sweep_axis(two_params) is None


def test_values_parsing_and_bad_requests():
    assert parse_values(" 1, 0.5,,1.0 ,2") == [1.0, 0.5, 2.0]
    assert sweepable_params("ties")[:2] == ["density", "lambda"]
    with pytest.raises(JobError, match="must be numbers"):
        parse_values("0.1,abc")
    with pytest.raises(JobError, match="at least two distinct"):
        parse_values("1,1.0")
    with pytest.raises(JobError, match="finite"):
        parse_values(["nan", 1])
    with pytest.raises(JobError, match=r"density=1.5 is outside its range \[0.0, 1.0\]"):
        sweep_configs("ties", "density", [0.5, 1.5])
    with pytest.raises(JobError, match="no numeric parameter 'normalize'"):
        sweep_configs("ties", "normalize", [0, 1])
    with pytest.raises(JobError, match="no numeric parameter 'alpha'.*lambda"):
        sweep_configs("task_arithmetic", "alpha", [0, 1])
    with pytest.raises(JobError, match="Unknown sweep method"):
        sweep_configs("nope", "lambda", [0, 1])
    with pytest.raises(JobError, match=r"Subset size 13 is outside 2..12"):
        define_sweep(base="/m/b", pool=POOL, method="task_arithmetic", param="lambda", values="1,2", n=13)


def test_sweep_job_refuses_bad_requests_at_submit(tmp_path):
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, devices=["cpu"], start=False)
        with pytest.raises(JobError, match="needs values"):
            runner.submit("sweep", {"base": "b", "pool": POOL, "method": "ties", "param": "density", "n": 2})
        with pytest.raises(JobError, match="backend"):
            runner.submit("sweep", {"backend": "slurm"})
        assert store.count("jobs") == 0


def _sweep(db, params):
    with Store(db) as store:
        runner = JobRunner(store, devices=["cpu"])
        try:
            (job,) = runner.wait([runner.submit("sweep", params)], timeout=600)
        finally:
            runner.shutdown()
        assert job.status == "done", job.error
        study = store.get_study(job.params["study_id"])
        results = store.study_results_df(study["id"])
        return job, study, {(r.config, r.subset_id, r.task): r.value for r in results.itertuples()}


@pytest.mark.slow
def test_lambda_sweep_runs_as_a_study_locally_and_on_ray(tmp_path, home, tiny_llama_family, zoo_tasks):
    base, cks = tiny_llama_family
    params = dict(
        base=str(base),
        pool=[str(c) for c in cks],
        method="task_arithmetic",
        param="lambda",
        values=[0.0, 1.0, 2.0],
        n=2,
        subsets=2,
        suite="zoo",
        zoo_root=str(zoo_tasks),
    )
    job, study, local = _sweep(tmp_path / "threads.duckdb", params)
    axis = sweep_axis(study["methods"])
    assert (axis.param, axis.values) == ("lambda", (0.0, 1.0, 2.0))
    assert job.params["sweep"] == {"method": "task_arithmetic", "param": "lambda", "values": [0.0, 1.0, 2.0]}
    assert len(local) == 3 * 2  # three values x two subsets x one task
    assert job.result["ran"] == 1 + 3 + 6  # base, three singles, six merges
    # lambda = 0 leaves the base unchanged: its merges score exactly like the base
    with Store(tmp_path / "threads.duckdb") as store:
        base_fp = store.models_df("base")["fingerprint"].iloc[0]
        base_score = store.eval_rows_df(fingerprints=[base_fp])["value"].iloc[0]
    for (config, _, _), value in local.items():
        if config.endswith("lambda=0"):
            assert value == pytest.approx(base_score, abs=1e-9)

    ray = pytest.importorskip("ray")
    try:
        _, _, remote = _sweep(tmp_path / "ray.duckdb", {**params, "backend": "ray", "ray_num_cpus": 2})
    finally:
        ray.shutdown()
    assert remote.keys() == local.keys()
    for key, value in local.items():
        assert remote[key] == pytest.approx(value, abs=1e-9)


def test_cli_sweep_without_a_zoo_says_what_to_do(tmp_path, home, capsys):
    from jobs.__main__ import main

    rc = main(
        ["sweep", "--db", str(tmp_path / "db.duckdb"), "--method", "task_arithmetic", "--param", "lambda"]
        + ["--values", "0.5,1", "--n", "2", "--zoo-root", str(tmp_path / "nozoo")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no demo zoo at") and "--base and --pool" in err


@pytest.mark.slow
def test_cli_sweep_prints_the_curve(tmp_path, home, tiny_llama_family, zoo_tasks, capsys):
    from jobs.__main__ import main

    base, cks = tiny_llama_family
    rc = main(
        ["sweep", "--db", str(tmp_path / "db.duckdb"), "--method", "task_arithmetic", "--param", "lambda"]
        + ["--values", "0,1", "--n", "2", "--subsets", "1", "--base", str(base), "--quiet"]
        + ["--pool", ",".join(map(str, cks)), "--suite", "zoo", "--zoo-root", str(zoo_tasks)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["lambda", "mean"])
    zero, one, base_line = (line.split() for line in lines[header + 1 : header + 4])
    assert zero[0] == "0" and one[0] == "1" and base_line[0] == "base"
    assert zero[1] == base_line[1]  # lambda = 0 is the base itself
    assert zero[4] == one[4] == "1"


def test_slerp_t_sweeps_single_checkpoints():
    d = define_sweep(
        base="/m/base", pool=POOL[:3], method="slerp", param="t", values="0,0.5,1", n=1, subsets=2
    )
    assert d.sizes == [1] and [c.params for c in d.configs] == [{"t": 0.0}, {"t": 0.5}, {"t": 1.0}]
    from jobs.study import sample_subsets

    subsets = sample_subsets(d.pool, d.sizes, d.subsets_per_size, d.seed)
    assert [len(cks) for _, _, cks in subsets] == [1, 1]
    recipe = build_recipe(d.configs[1], d.base, subsets[0][2], d.seed)
    assert recipe.parameters == {"t": 0.5} and len(recipe.models) == 1
    with pytest.raises(JobError, match="slerp t=0'?: slerp takes exactly 1 checkpoint"):
        define_sweep(base="/m/base", pool=POOL[:3], method="slerp", param="t", values="0,1", n=2)


def test_a_single_checkpoint_sweep_reads_back_from_its_job_parameters():
    from jobs.study import definition_from_params
    from jobs.sweep import sweep_params

    d = define_sweep(base="/m/base", pool=POOL[:3], method="slerp", param="t", values="0,1", n=1)
    again = definition_from_params(sweep_params(d))  # what the running job does with its parameters
    assert again.sizes == [1] and again.study_id == d.study_id
