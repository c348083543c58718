"""A database left at any older schema version migrates to the latest, keeps its rows and ends with exactly
the schema a fresh file gets (columns, types, defaults, keys)."""

import duckdb
import pytest

from store import SCHEMA_VERSION, Store, migrate


def _schema(con) -> dict:
    columns = con.execute(
        "SELECT table_name, column_name, data_type, column_default, is_nullable FROM duckdb_columns() "
        "WHERE NOT internal ORDER BY table_name, column_index"
    ).fetchall()
    constraints = con.execute(
        "SELECT table_name, constraint_type, constraint_text FROM duckdb_constraints() WHERE table_name IN "
        "(SELECT table_name FROM duckdb_tables() WHERE NOT internal)"
    ).fetchall()
    return {"columns": columns, "constraints": sorted(map(str, constraints))}


@pytest.fixture(scope="module")
def fresh_schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("fresh") / "fresh.duckdb"
    with Store(path):
        pass
    with duckdb.connect(str(path)) as con:
        return _schema(con)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_file_at_each_older_version_migrates_with_its_rows(tmp_path, version, fresh_schema):
    path = tmp_path / f"v{version}.duckdb"
    with duckdb.connect(str(path)) as con:
        assert migrate(con, target=version) == version
        con.execute(
            "INSERT INTO eval_rows (fingerprint, model_name, suite, suite_version, task, metric, value, n, "
            '"limit", limit_key, created_at, position) '
            "VALUES ('fp1', 'm', 'zoo', 'zoo-1', 'add', 'acc', 0.5, 10, NULL, -1, current_timestamp, 3)"
        )
        con.execute(
            "INSERT INTO jobs (id, kind, params_json, status, created_at) "
            "VALUES ('j1', 'merge', '{}', 'done', current_timestamp)"
        )
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        (row,) = store.get_eval_rows("fp1", "zoo-1", None)
        assert (row["task"], row["value"], row["n"]) == ("add", 0.5, 10)
        assert store.table("eval_rows").position.tolist() == [3]
        assert store.get_job("j1").status == "done"
    with duckdb.connect(str(path)) as con:
        assert _schema(con) == fresh_schema
