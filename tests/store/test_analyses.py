"""Analyses are stored like a merge's stats: one record plus rows in the shared geometry tables."""

import pytest

from store import Store, StoreError


@pytest.fixture
def db(tmp_path):
    with Store(tmp_path / "a.duckdb") as store:
        yield store


TENSORS = [
    {
        "name": "model.layers.1.mlp.up_proj.weight",
        "shape": [2, 2],
        "numel": 4,
        "task_norms": [1.0, 2.0],
        "delta_norm": None,
        "cosines": [[1.0, -0.5], [-0.5, 1.0]],
        "sign_conflict": 0.25,
    }
]
SPECTRA = [
    {
        "tensor": "model.layers.1.mlp.up_proj.weight",
        "source": "task",
        "index": 1,
        "singular_values": [2.0, 0.0],
        "effective_rank": 1.0,
    }
]
SUMMARY = {
    "model_delta_norm": None,
    "model_task_norms": [1.0, 2.0],
    "model_cosines": [[1.0, -0.5], [-0.5, 1.0]],
    "most_conflicting": ["layer 01"],
}


def test_analysis_round_trip(db):
    aid = db.put_analysis(
        base_ref="/m/base",
        checkpoint_refs=["/m/a", "/m/b"],
        fingerprints={"/m/base": "fb", "/m/a": "fa", "/m/b": "fbb"},
        summary=SUMMARY,
        tensors=TENSORS,
        spectra=SPECTRA,
        seconds=0.5,
        device="cpu",
        job_id="j1",
    )
    assert aid.startswith("analysis-")
    row = db.get_analysis(aid)
    assert row["checkpoint_refs"] == ["/m/a", "/m/b"] and row["n"] == 2
    assert row["checkpoint_fingerprints"] == ["fa", "fbb"] and row["base_fingerprint"] == "fb"
    assert row["summary"]["most_conflicting"] == ["layer 01"]
    ts = db.tensor_stats_df(aid)
    assert ts.iloc[0]["layer"] == 1 and ts.iloc[0]["sign_conflict"] == 0.25
    assert ts.iloc[0]["delta_norm"] is None or ts["delta_norm"].isna().all()
    assert list(db.spectra_df(aid)["idx"]) == [1]
    stats = db.model_stats_df([aid])
    assert list(stats.iloc[0]["model_task_norms"]) == [1.0, 2.0]
    assert stats["model_delta_norm"].isna().all()
    # analyses never show up as merges
    assert db.merges_df().empty
    assert list(db.analyses_df()["id"]) == [aid]


def test_analysis_rewrite_and_delete(db):
    aid = db.put_analysis(base_ref="b", checkpoint_refs=["x"], tensors=TENSORS, summary=SUMMARY)
    db.put_analysis(base_ref="b", checkpoint_refs=["x"], tensors=TENSORS * 1, analysis_id=aid)
    assert len(db.tensor_stats_df(aid)) == 1 and db.count("analyses") == 1
    db.delete_analysis(aid)
    assert db.count("analyses") == 0 and db.tensor_stats_df(aid).empty and db.model_stats_df([aid]).empty


def test_unknown_analysis_and_bad_id(db):
    with pytest.raises(StoreError, match="No analysis"):
        db.get_analysis("analysis-nope")
    with pytest.raises(StoreError, match="start with"):
        db.put_analysis(base_ref="b", checkpoint_refs=["x"], analysis_id="m123")
