"""Home while the demo zoo is half built: the ready family is offered (and registered), the pending one is
named, and a stopped build can be finished."""

import json

import pytest

from tests.app.conftest import app_test, errors_of

pytestmark = pytest.mark.slow


def test_home_offers_the_ready_family_and_names_the_pending_one(tmp_path, monkeypatch):
    from zoo import build_zoo

    home = tmp_path / "ws"
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    build_zoo(home / "zoo", families=("llama",), scale="tiny")
    # what zoo.json holds after the first family of a two-family build that stopped before the second
    manifest = home / "zoo" / "zoo.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "pending": ["qwen3"]}))

    at = app_test(home)
    assert errors_of(at) == []
    assert any("`zoo-llama` is ready" in s.value for s in at.success)
    assert any("Pending: `zoo-qwen3` was not finished" in w.value for w in at.warning)
    assert any(b.label == "Finish building the demo zoo" for b in at.button)
    assert {m.label: m.value for m in at.sidebar.metric}["Models"] == "13"  # the ready family, registered
