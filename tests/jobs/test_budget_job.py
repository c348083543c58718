"""The memory budget travels from the Merge page through the job to the engine (issue 10)."""

from __future__ import annotations

import pytest
import torch

from merging import DirectorySink, run_merge
from merging.budget import BASE_OVERHEAD
from merging.errors import MemoryBudgetError
from tests.merging.helpers import weights
from tests.merging.test_blocks import SMALL, _recipe
from tests.tiny_models import make_family


@pytest.fixture(scope="module")
def wide_vocab_family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("wide-vocab"), vocab_size=600, n=3)


def test_the_app_and_jobs_carry_the_budget_to_the_engine(tmp_path, wide_vocab_family):
    """Merge page → launch.submit_merge → job params → validate → run_merge_tracked(max_memory=)."""
    from jobs.errors import JobError
    from jobs.kinds import validate_merge
    from jobs.work import run_merge_tracked
    from ui import launch

    base, cks = wide_vocab_family
    r = _recipe("ties", base, cks)

    class Runner:  # records what would be queued
        submitted: list = []

        def submit(self, kind, params, **_):
            self.submitted.append((kind, params))
            return "job"

    launch.submit_merge(Runner(), r, save=False, suite="zoo", max_memory="6GiB")
    assert Runner.submitted[-1][1]["max_memory"] == "6GiB"
    with pytest.raises(JobError, match="cannot read memory size"):
        validate_merge({"recipe_yaml": r.to_yaml(), "max_memory": "lots"})
    with pytest.raises(MemoryBudgetError):
        run_merge_tracked(r, DirectorySink(tmp_path / "o"), device="cpu", max_memory=BASE_OVERHEAD + 64)
    result, _ = run_merge_tracked(
        r, DirectorySink(tmp_path / "p"), device="cpu", max_memory=BASE_OVERHEAD + SMALL
    )
    whole = weights(run_merge(r, DirectorySink(tmp_path / "w")).output_path)
    assert all(torch.equal(weights(result.output_path)[k], v) for k, v in whole.items())
