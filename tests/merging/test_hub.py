"""Hub checkpoints over HTTP, against a local server that speaks the Hub's API and ranged reads.

The server serves tiny models from a folder; it counts the bytes it sends so the tests can tell that
describing a model read its headers, not its weights.
"""

from __future__ import annotations

import time

import pytest
import torch

import merging
from merging import CheckpointError, MergeCancelled, check_compatibility, open_checkpoint
from merging.hub import cached_snapshot, download_checkpoint
from tests.hub_server import publish, start_hub


@pytest.fixture
def hub(tmp_path, tiny_llama_family, monkeypatch):
    """A local 'Hub' serving the tiny Llama family as org/base and org/ft0..ft2."""
    base, cks = tiny_llama_family
    root = tmp_path / "hub-root"
    for name, src in [("base", base), *[(f"ft{i}", c) for i, c in enumerate(cks)]]:
        publish(root, f"org/{name}", src)
    server, handler = start_hub(root)
    monkeypatch.setenv("MERGELAB_HUB_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("MERGELAB_HOME", str(tmp_path / "home"))
    yield handler, base, cks
    server.shutdown()


def test_hub_id_is_described_from_headers_without_downloading_weights(hub, tmp_path):
    handler, base, _ = hub
    started = time.monotonic()
    remote = open_checkpoint("org/base", download=False)
    assert time.monotonic() - started < 5
    local = open_checkpoint(base)
    assert remote.remote and not local.remote
    assert remote.architecture == local.architecture
    assert remote.num_parameters == local.num_parameters
    assert {n: (t.shape, t.dtype, t.offset) for n, t in remote.tensors.items()} == {
        n: (t.shape, t.dtype, t.offset) for n, t in local.tensors.items()
    }
    weights = (base / "model.safetensors").stat().st_size
    assert handler.sent["model.safetensors"] < weights / 4  # headers only
    assert all(r.startswith("bytes=") for r in handler.ranges)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.safetensors"))
    with pytest.raises(CheckpointError, match="known from its Hub headers only"):
        remote.read(next(iter(remote.tensors)))


def test_compatibility_of_remote_checkpoints(hub):
    remote_base = open_checkpoint("org/base", download=False)
    remotes = [open_checkpoint(f"org/ft{i}", download=False) for i in range(3)]
    report = check_compatibility(remote_base, remotes)
    assert report.ok
    assert len({r.fingerprint for r in [remote_base, *remotes]}) == 4


def test_download_resumes_checks_and_lands_in_the_workspace(hub, tmp_path):
    handler, base, _ = hub
    cache = tmp_path / "home" / "cache" / "hub"
    handler.fail_after = 2000  # the first attempt breaks off mid-weights
    with pytest.raises(CheckpointError):
        download_checkpoint("org/base", cache_dir=cache)
    assert cached_snapshot("org/base", cache) is None
    parts = list(cache.rglob("*.part"))
    assert parts and parts[0].stat().st_size == 2000
    handler.fail_after = None
    got = download_checkpoint("org/base", cache_dir=cache)
    assert any(r == "bytes=2000-" for r in handler.ranges)  # resumed, not restarted
    assert (got / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    assert cached_snapshot("org/base", cache) == got
    # once cached, a Hub id opens locally and reads real tensors, with the local content fingerprint
    ck = open_checkpoint("org/base", cache_dir=cache, download=False)
    assert not ck.remote
    name = next(iter(ck.tensors))
    assert torch.equal(ck.read(name), open_checkpoint(base).read(name))


def test_download_is_cancellable(hub, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(MergeCancelled):
        download_checkpoint("org/ft1", cache_dir=cache, should_cancel=lambda: True)
    assert cached_snapshot("org/ft1", cache) is None


def test_merge_of_hub_ids_downloads_into_the_workspace(hub, tmp_path):
    from merging import DirectorySink, Recipe, run_merge

    recipe = Recipe.from_yaml(
        "merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n"
        "  - model: org/ft0\n    parameters: {weight: 0.5}\n"
        "  - model: org/ft1\n    parameters: {weight: 0.5}\n"
    )
    run_merge(recipe, DirectorySink(tmp_path / "out"))
    assert (tmp_path / "out" / "config.json").is_file()
    assert cached_snapshot("org/ft1", tmp_path / "home" / "cache" / "hub") is not None


def test_offline_and_unknown_repositories_fail_at_once(hub, monkeypatch):
    with pytest.raises(CheckpointError, match="no such Hub repository"):
        open_checkpoint("org/missing", download=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="offline"):
        open_checkpoint("org/base", download=False)
    assert time.monotonic() - started < 1


def test_unreachable_hub_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("MERGELAB_HUB_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(CheckpointError, match="cannot be reached"):
        open_checkpoint("org/base", download=False, cache_dir=tmp_path)


def test_public_face_exports_the_hub_tools():
    assert merging.download_checkpoint is download_checkpoint
    assert merging.RemoteCheckpoint.remote
