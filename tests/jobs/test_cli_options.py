"""`python -m jobs study` and `sweep` read their shared run options alike (one parent parser)."""

import pytest

from jobs.__main__ import _parser, _run_params

RUN = {
    "zoo_root": "/zoo",
    "seed": 3,
    "limit": 5,
    "name": "night",
    "backend": "ray",
    "ray_address": "10.0.0.1:6379",
    "ray_num_cpus": 2,
    "processes": "2",
    "workers": 4,
    "quiet": True,
}
RUN_ARGV = [
    "--zoo-root", "/zoo", "--seed", "3", "--limit", "5", "--name", "night", "--backend", "ray",
    "--ray-address", "10.0.0.1:6379", "--ray-num-cpus", "2", "--processes", "2", "--workers", "4", "--quiet",
]  # fmt: skip
STUDY = ["study", "--base", "b", "--pool", "p1,p2", "--suite", "quick"]
SWEEP = ["sweep", "--method", "task_arithmetic", "--param", "lambda", "--values", "0.5,1", "--n", "2"]


@pytest.mark.parametrize("head", [STUDY, SWEEP], ids=["study", "sweep"])
def test_run_options_parse_the_same_in_study_and_sweep(head):
    args = _parser().parse_args(head + RUN_ARGV)
    assert {key: getattr(args, key) for key in RUN} == RUN


@pytest.mark.parametrize(("head", "suite"), [(STUDY, "quick"), (SWEEP, "zoo")], ids=["study", "sweep"])
def test_run_options_become_the_same_job_parameters(head, suite):
    params = _run_params(_parser().parse_args(head + RUN_ARGV))
    assert params == {
        "suite": suite,
        **{key: value for key, value in RUN.items() if key not in ("workers", "quiet")},
    }


@pytest.mark.parametrize("head", [STUDY, SWEEP], ids=["study", "sweep"])
def test_run_option_defaults(head):
    args = _parser().parse_args(head)
    assert (args.zoo_root, args.seed, args.limit, args.name, args.processes) == (None, 0, None, "", "auto")
    assert (args.backend, args.ray_address, args.ray_num_cpus, args.workers, args.quiet) == (
        "local", None, None, None, False
    )  # fmt: skip


def test_the_subcommands_keep_their_own_options():
    study = _parser().parse_args(STUDY + ["--save-merges"])
    sweep = _parser().parse_args(SWEEP)
    assert study.save_merges is True and not hasattr(sweep, "save_merges")
    assert sweep.suite == "zoo"  # sweep defaults the suite; study requires it
    with pytest.raises(SystemExit):
        _parser().parse_args([a for a in STUDY if a not in ("--suite", "quick")])
    with pytest.raises(SystemExit):
        _parser().parse_args(SWEEP + ["--backend", "slurm"])
