"""The download job: a Hub checkpoint's weights fetched in the background into the workspace, resumable."""

from __future__ import annotations

from jobs import JobRunner
from merging.hub import cached_snapshot
from store import Store
from tests.hub_server import publish, start_hub


def test_download_job_fetches_into_the_workspace(tmp_path, home, monkeypatch, tiny_llama_family):
    base, _ = tiny_llama_family
    publish(tmp_path / "hub", "org/base", base)
    server, handler = start_hub(tmp_path / "hub")
    monkeypatch.setenv("MERGELAB_HUB_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    store = Store(tmp_path / "db.duckdb")
    runner = JobRunner(store)
    try:
        jid = runner.submit("download", {"repo_id": "org/base"})
        (record,) = runner.wait([jid], timeout=60)
    finally:
        runner.shutdown()
        server.shutdown()
    assert record.status == "done", record.error
    path = cached_snapshot("org/base", home / "cache" / "hub")
    assert path is not None and str(path) == record.result["path"]
    assert (path / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()


def test_download_job_refuses_a_path(tmp_path):
    import pytest

    from jobs import JobError

    runner = JobRunner(Store(tmp_path / "db.duckdb"))
    try:
        with pytest.raises(JobError, match="Hub id"):
            runner.submit("download", {"repo_id": "../etc"})
    finally:
        runner.shutdown()
