import json
import subprocess
import sys
import threading
import time

import duckdb
import pandas as pd
import pytest

from store import SCHEMA_VERSION, Store, StoreError, current_version, migrate, parse_layer, tensor_kind


@pytest.fixture
def db(tmp_path):
    with Store(tmp_path / "m.duckdb") as store:
        yield store


def _row(**over):
    row = dict(
        fingerprint="fp1",
        model_name="m",
        suite="zoo",
        suite_version="zoo-1",
        task="add",
        metric="acc",
        value=0.5,
        stderr=0.1,
        n=10,
        limit=None,
        lm_eval_version="0.4.13",
        seconds=1.5,
    )
    row.update(over)
    return row


def test_fresh_file_is_at_latest_version(db):
    assert db.schema_version == SCHEMA_VERSION == 5
    with db.cursor() as cur:
        assert current_version(cur) == 5
    assert db.count("jobs") == 0


def test_older_file_is_migrated_and_keeps_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    assert migrate(con, target=1) == 1
    con.execute(
        "INSERT INTO merges (id, recipe_yaml, method, status) "
        "VALUES ('m1', 'merge_method: ties', 'ties', 'done')"
    )
    con.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        merge = store.get_merge("m1")
        assert merge["method"] == "ties" and merge["study_id"] is None
        assert store.count("studies") == 0 and store.count("analyses") == 0
        versions = store.table("schema_version")["version"].tolist()
        assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_version_2_geometry_gains_the_kept_mass_columns_empty(tmp_path):
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    assert migrate(con, target=2) == 2
    con.execute(
        "INSERT INTO tensor_stats (merge_id, tensor, kind, numel, delta_norm) "
        "VALUES ('m', 'w', 'mlp', 4, 1.5)"
    )
    con.execute("INSERT INTO model_stats (merge_id, model_delta_norm) VALUES ('m', 1.5)")
    con.close()
    with Store(path) as store:
        row = store.tensor_stats_df("m").iloc[0]
        assert row.delta_norm == 1.5 and pd.isna(row.task_dots) and pd.isna(row.dropped_l1)
        model = store.model_stats_df(["m"]).iloc[0]
        assert model.model_delta_norm == 1.5 and pd.isna(model.mass_dropped)


def test_newer_file_is_refused(tmp_path):
    path = tmp_path / "new.duckdb"
    with Store(path) as store:
        store._write("INSERT INTO schema_version VALUES (99, current_timestamp)")
    with pytest.raises(StoreError, match="newer than this MergeLab"):
        Store(path)


def test_file_held_by_another_process_gives_actionable_error(tmp_path):
    path = tmp_path / "held.duckdb"
    Store(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,time; c=duckdb.connect({str(path)!r}); print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError, match="Another MergeLab process"):
            Store(path)
    finally:
        holder.kill()
        holder.wait()


def test_model_upsert_keeps_first_registration(db):
    db.register_model("fp", "base", "/m/base", architecture="LlamaForCausalLM", num_parameters=100)
    first = db.get_model("fp")["registered_at"]
    time.sleep(0.01)
    db.register_model("fp", "base", "/m/base", vocab_size=49)
    model = db.get_model("fp")
    assert model["registered_at"] == first
    assert (model["num_parameters"], model["vocab_size"]) == (100, 49)
    assert len(db.models_df()) == 1
    with pytest.raises(StoreError, match="Unknown model kind"):
        db.register_model("fp2", "lora", "/x")


def test_eval_rows_are_idempotent_per_limit(db):
    db.put_eval_rows([_row(task="zed", metric="acc_norm", value=0.25), _row()])
    db.put_eval_rows([_row(task="zed", metric="acc_norm", value=0.25), _row(value=0.75)])
    db.put_eval_rows([_row(limit=10, value=0.1)])
    assert db.count("eval_rows") == 3
    full = db.get_eval_rows("fp1", "zoo-1", None)
    assert [(r["task"], r["value"]) for r in full] == [("zed", 0.25), ("add", 0.75)]  # written order
    assert [r["value"] for r in db.get_eval_rows("fp1", "zoo-1", 10)] == [0.1]
    assert db.get_eval_rows("fp1", "zoo-2", None) == []
    assert "limit_key" not in db.eval_rows_df(["fp1"]).columns
    with pytest.raises(StoreError, match="lacks task"):
        db.put_eval_rows([_row(task=None)])


def test_tensor_names_give_layer_and_kind():
    assert parse_layer("model.layers.11.mlp.up_proj.weight") == 11
    assert parse_layer("model.embed_tokens.weight") is None
    assert tensor_kind("model.embed_tokens.weight") == "embed"
    assert tensor_kind("lm_head.weight") == "head"
    assert tensor_kind("model.layers.0.self_attn.q_norm.weight") == "norm"
    assert tensor_kind("model.layers.0.input_layernorm.weight") == "norm"
    assert tensor_kind("model.layers.0.self_attn.o_proj.weight") == "attn"
    assert tensor_kind("model.layers.1.mlp.down_proj.weight") == "mlp"
    assert tensor_kind("model.rotary_emb.inv_freq") == "other"


def test_merge_record_and_geometry_roundtrip(db):
    mid = db.begin_merge(
        recipe_yaml="merge_method: ties\n",
        method="ties",
        base_fingerprint="b",
        checkpoint_refs=["c1", "c2"],
        params={"density": 0.1},
        seed=3,
    )
    assert db.get_merge(mid)["status"] == "running" and db.get_merge(mid)["n"] == 2
    tensors = [
        dict(
            name="model.layers.1.mlp.up_proj.weight",
            shape=(4, 2),
            numel=8,
            task_norms=[1.0, 2.0],
            delta_norm=1.5,
            cosines=[[1.0, 0.2], [0.2, 1.0]],
            sign_conflict=0.25,
        ),
        dict(
            name="model.norm.weight",
            shape=(4,),
            numel=4,
            task_norms=[0.1, 0.2],
            delta_norm=float("nan"),
            cosines=None,
            sign_conflict=0.0,
            task_dots=[0.5, -0.25],
            task_l1=3.0,
            dropped_l1=1.0,
            conflict_dropped=0.75,
            conflict_summed=0.25,
        ),
    ]
    spectra = [
        dict(
            tensor="model.layers.1.mlp.up_proj.weight",
            source="task",
            index=1,
            singular_values=[3.0, 1.0],
            effective_rank=1.75,
        )
    ]
    for _ in range(2):  # rewriting replaces, never duplicates
        db.put_merge_stats(
            mid,
            tensors=tensors,
            spectra=spectra,
            model=dict(
                model_delta_norm=2.5,
                model_task_norms=[1.0, 2.0],
                model_cosines=[[1, 0], [0, 1]],
                model_task_dots=[0.5, -0.25],
                mass_dropped=1 / 3,
            ),
        )
    ts = db.tensor_stats_df(mid)
    assert len(ts) == 2
    up = ts[ts.tensor.str.contains("up_proj")].iloc[0]
    assert (up.layer, up.kind, list(up["shape"]), list(up.task_norms)) == (1, "mlp", [4, 2], [1.0, 2.0])
    assert json.loads(up.cosines_json) == [[1.0, 0.2], [0.2, 1.0]]
    assert pd.isna(ts[ts.tensor == "model.norm.weight"].iloc[0].delta_norm)
    assert list(db.spectra_df(mid).iloc[0].singular_values) == [3.0, 1.0]
    assert db.model_stats_df([mid]).iloc[0].model_delta_norm == 2.5
    norm = ts[ts.tensor == "model.norm.weight"].iloc[0]
    assert list(norm.task_dots) == [0.5, -0.25] and (norm.task_l1, norm.dropped_l1) == (3.0, 1.0)
    assert (norm.conflict_dropped, norm.conflict_summed) == (0.75, 0.25)
    assert pd.isna(up.dropped_l1)  # a row recorded without the kept-mass fields keeps them empty
    model = db.model_stats_df([mid]).iloc[0]
    assert list(model.model_task_dots) == [0.5, -0.25] and model.mass_dropped == pytest.approx(1 / 3)
    assert pd.isna(model.conflict_dropped)
    assert len(db.tensor_stats_df([mid, "other"])) == 2  # several merges at once
    db.finish_merge(mid, "done", seconds=1.25, merged_fingerprint="mf")
    assert db.get_merge(mid)["merged_fingerprint"] == "mf"
    db.discard_merge(mid)
    assert (db.count("merges"), db.count("tensor_stats"), db.count("spectra")) == (0, 0, 0)


def test_job_state_machine(db):
    a = db.add_job("merge", {"x": 1})
    b = db.add_job("evaluate", {"y": 2})
    assert db.claim_next_job("me", 1, kinds=["evaluate"]).id == b
    job = db.claim_next_job("me", 1)
    assert (job.id, job.status, job.attempt, job.params) == (a, "running", 1, {"x": 1})
    assert db.claim_next_job("me", 1) is None
    db.update_job_progress(a, 1.7, "half")
    db.append_job_log(a, "line 1")
    db.append_job_log(a, "line 2\n")
    job = db.get_job(a)
    assert (job.progress, job.message, job.log) == (1.0, "half", "line 1\nline 2\n")
    assert db.request_job_cancel(a) == "running" and db.is_cancel_requested(a)
    db.finish_job(a, "cancelled")
    db.retry_job(a)
    job = db.get_job(a)
    assert (job.status, job.cancel_requested, job.log.splitlines()[-1]) == (
        "queued",
        False,
        "--- retry after cancelled (attempt 2) ---",
    )
    assert db.claim_next_job("me", 1).attempt == 2
    db.finish_job(a, "done", result={"merge_id": "m"})
    assert db.get_job(a).result == {"merge_id": "m"} and db.get_job(a).progress == 1.0
    with pytest.raises(StoreError, match="only failed, cancelled, interrupted"):
        db.retry_job(a)
    c = db.add_job("merge", {})
    assert db.request_job_cancel(c) == "cancelled"
    assert db.claim_next_job("me", 1) is None
    with pytest.raises(StoreError, match="JSON values"):
        db.add_job("merge", {"p": object()})
    assert list(db.jobs_df()["id"]) == [c, a, b]


def test_concurrent_writers_lose_nothing(db):
    def work(t):
        for i in range(25):
            jid = db.add_job("merge", {"t": t, "i": i})
            db.append_job_log(jid, f"{t}-{i}")
            db.put_eval_rows([_row(fingerprint=f"fp{t}", task=f"task{i}")])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.count("jobs") == 150 and db.count("eval_rows") == 150
    assert sorted(db.table("jobs")["log"])[:2] == ["0-0\n", "0-1\n"]


def test_export_csv_and_parquet(db, tmp_path):
    db.put_eval_rows([_row(), _row(task="sub", value=0.25)])
    csv = pd.read_csv(db.export_table("eval_rows", tmp_path / "out" / "rows.csv", "csv"))
    assert sorted(csv["value"]) == [0.25, 0.5]
    parquet = pd.read_parquet(db.export_table("eval_rows", tmp_path / "rows.parquet", "parquet"))
    assert sorted(parquet["task"]) == ["add", "sub"]
    with pytest.raises(StoreError, match="Unknown table"):
        db.export_table("users; drop table jobs", tmp_path / "x.csv")
    with pytest.raises(StoreError, match="Unknown export format"):
        db.export_table("jobs", tmp_path / "x.xlsx", "xlsx")


def test_study_results_join_merges_and_scores(db):
    sid = db.create_study(
        name="s",
        base="B",
        pool=["c1", "c2", "c3"],
        methods=["ties"],
        sizes=[2],
        subsets_per_size=2,
        seed=0,
        suite="zoo",
        limit=5,
    )
    db.add_study_subsets(sid, [(2, "n2-00", ["c1", "c2"]), (2, "n2-01", ["c1", "c3"])])
    db.add_study_subsets(sid, [(2, "n2-00", ["c1", "c2"])])
    assert [s["checkpoints"] for s in db.study_subsets(sid)] == [["c1", "c2"], ["c1", "c3"]]
    mid = db.begin_merge(
        recipe_yaml="y",
        method="ties",
        base_fingerprint="b",
        checkpoint_refs=["c1", "c2"],
        study_id=sid,
        subset_id="n2-00",
    )
    db.finish_merge(mid, "done", merged_fingerprint="mf")
    db.put_eval_rows([_row(fingerprint="mf", limit=5, value=0.4), _row(fingerprint="mf", limit=None)])
    res = db.study_results_df(sid)
    assert list(res["value"]) == [0.4] and res.iloc[0]["subset_id"] == "n2-00"
    assert db.get_study(sid)["pool"] == ["c1", "c2", "c3"]


def test_cursor_pool_is_bounded_whatever_the_number_of_threads(db):
    """Streamlit runs each rerun on a fresh thread: 200 short-lived threads must not open 200 cursors."""
    from store.db import POOL_SIZE

    db.add_job("merge", {})
    errors = []

    def poll():
        try:
            db.jobs_df()
            db.count("jobs")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    for _ in range(20):
        threads = [threading.Thread(target=poll) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert 1 <= db.cursors_open <= POOL_SIZE


def test_reads_inside_a_transaction_see_its_writes(db):
    job = db.add_job("merge", {})
    with db.transaction() as cur:
        cur.execute("UPDATE jobs SET message = 'inside' WHERE id = ?", [job])
        assert db.get_job(job).message == "inside"  # same thread, same cursor, same transaction
    assert db.get_job(job).message == "inside"


def test_scores_are_keyed_by_dtype_and_device(db):
    db.put_eval_rows([_row(value=0.5, dtype="float32", device="cpu")])
    db.put_eval_rows([_row(value=0.75, dtype="bfloat16", device="cuda")])
    cpu = db.get_eval_rows("fp1", "zoo-1", None, dtype="float32", device="cpu")
    gpu = db.get_eval_rows("fp1", "zoo-1", None, dtype="bfloat16", device="cuda")
    assert [r["value"] for r in cpu] == [0.5] and [r["value"] for r in gpu] == [0.75]
    assert db.get_eval_rows("fp1", "zoo-1", None, dtype="float16", device="cuda") == []
    assert db.get_eval_rows("fp2", "zoo-1", None, dtype="float32", device="cpu") == []
    assert [r["value"] for r in db.get_eval_rows("fp1", "zoo-1", None)] == [0.75]  # any: the newest
    db.put_eval_rows([_row(value=0.25, dtype="float32", device="cpu")])  # rescored: replaced, not added
    assert db.count("eval_rows") == 2


def test_version_4_file_upgrades_to_content_keys(tmp_path):
    path = tmp_path / "v4.duckdb"
    con = duckdb.connect(str(path))
    assert migrate(con, target=4) == 4
    con.execute(
        "INSERT INTO eval_rows VALUES ('fp1', 'm', 'zoo', 'zoo-1', 'add', 'acc', 0.5, NULL, 10, NULL, -1, "
        "'0.4.13', 1.0, current_timestamp, 0)"
    )
    con.execute(
        "INSERT INTO jobs (id, kind, params_json, status, created_at) "
        "VALUES ('j1', 'merge', '{}', 'done', current_timestamp)"
    )
    con.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 5
        (row,) = store.get_eval_rows("fp1", "zoo-1", None)
        assert row["value"] == 0.5 and row["dtype"] == "" and row["device"] == ""
        # an old row does not say how it was computed, so a keyed lookup rescoring it is right
        assert store.get_eval_rows("fp1", "zoo-1", None, dtype="float32", device="cpu") == []
        assert store.table("jobs").group_id.tolist() == [None]
        assert "superseded_at" in store.table("merges").columns
