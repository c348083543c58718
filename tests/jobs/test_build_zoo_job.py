"""The build-zoo job registers each zoo family as soon as it is built, so the app can offer the first
family for merging while the second one trains."""

import pytest

from jobs import JobRunner
from store import Store

pytestmark = pytest.mark.slow


def test_build_zoo_job_registers_each_family_when_ready(tmp_path, home):
    root = tmp_path / "zoo"
    with Store(tmp_path / "db.duckdb") as store:
        runner = JobRunner(store, workers=1)
        try:
            job_id = runner.submit("build-zoo", {"root": str(root), "scale": "tiny"})
            (job,) = runner.wait([job_id], timeout=900)
        finally:
            runner.shutdown()
        assert job.status == "done", job.error
        lines = [ln.split(" ", 1)[1] for ln in job.log.splitlines()]  # drop the timestamps
        ready_llama = next(i for i, ln in enumerate(lines) if ln.startswith("family llama ready"))
        assert "(13 models registered); still to build: qwen3" in lines[ready_llama]
        # the llama family was registered before any qwen3 model started training
        first_qwen3 = next(i for i, ln in enumerate(lines) if ln.startswith("zoo-qwen3"))
        assert ready_llama < first_qwen3
        assert any(ln.startswith("family qwen3 ready") and "still" not in ln for ln in lines)
        assert set(job.result["families_ready_s"]) == {"llama", "qwen3"}
        models = store.models_df()
        assert len(models) == 26
        assert sorted(models[models["kind"] == "base"]["name"]) == ["zoo-llama", "zoo-qwen3"]
        assert set(models["ref"]) == {str(p) for p in (root / "models").iterdir()}
        assert set(models["architecture"]) == {"LlamaForCausalLM", "Qwen3ForCausalLM"}

        # building again registers nothing twice and retrains nothing
        runner = JobRunner(store, workers=1)
        try:
            (again,) = runner.wait(
                [runner.submit("build-zoo", {"root": str(root), "scale": "tiny"})], timeout=300
            )
        finally:
            runner.shutdown()
        assert again.status == "done" and "(0 models registered)" in again.log
        assert "zoo-llama-chat" not in again.log  # nothing trained
        assert len(store.models_df()) == 26
