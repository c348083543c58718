"""The versioned DuckDB schema: an ordered list of migrations applied on open.

A database remembers its version in `schema_version`; opening it applies every later migration in order,
inside one transaction each, so a file written by an older MergeLab keeps its rows and gains the new
tables and columns. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import duckdb

# The evaluation rows' columns as version 1 created them. Version 5 rebuilds the table with these and two
# more, so they are spelled once here; this list is part of released migrations: never change it.
_EVAL_ROWS_V1_COLUMNS = (
    ("fingerprint", "VARCHAR NOT NULL"),
    ("model_name", "VARCHAR"),
    ("suite", "VARCHAR NOT NULL"),
    ("suite_version", "VARCHAR NOT NULL"),
    ("task", "VARCHAR NOT NULL"),
    ("metric", "VARCHAR NOT NULL"),
    ("value", "DOUBLE"),
    ("stderr", "DOUBLE"),
    ("n", "INTEGER"),
    ('"limit"', "INTEGER"),
    ("limit_key", "INTEGER NOT NULL"),
    ("lm_eval_version", "VARCHAR"),
    ("seconds", "DOUBLE"),
    ("created_at", "TIMESTAMP NOT NULL"),
    ("position", "INTEGER NOT NULL DEFAULT 0"),
)
_EVAL_ROWS_V1_KEY = "fingerprint, suite_version, task, metric, limit_key"
_EVAL_ROWS_V1_NAMES = ", ".join(name for name, _ in _EVAL_ROWS_V1_COLUMNS)


def _create_eval_rows(
    table: str, extra: tuple[tuple[str, str], ...] = (), key: str = _EVAL_ROWS_V1_KEY
) -> str:
    """CREATE TABLE for the evaluation rows: version 1's columns, then `extra` ones, unique on `key`."""
    columns = "".join(f"    {name} {definition},\n" for name, definition in _EVAL_ROWS_V1_COLUMNS + extra)
    return f"CREATE TABLE {table} (\n{columns}    UNIQUE ({key})\n)"


# Version 1: models, merges, evaluation rows, engine geometry, jobs.
_V1 = [
    """
    CREATE TABLE models (
        fingerprint VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL CHECK (kind IN ('base', 'checkpoint', 'merged')),
        ref VARCHAR NOT NULL,
        name VARCHAR,
        architecture VARCHAR,
        num_parameters BIGINT,
        vocab_size INTEGER,
        dtype VARCHAR,
        registered_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE merges (
        id VARCHAR PRIMARY KEY,
        recipe_yaml VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        config VARCHAR,
        base_fingerprint VARCHAR,
        checkpoint_refs VARCHAR[],
        checkpoint_fingerprints VARCHAR[],
        n INTEGER,
        seed BIGINT,
        params_json VARCHAR,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'done', 'failed', 'cancelled', 'interrupted')),
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        seconds DOUBLE,
        output_path VARCHAR,
        peak_memory_bytes BIGINT,
        error VARCHAR,
        merged_fingerprint VARCHAR,
        job_id VARCHAR
    )
    """,
    _create_eval_rows("eval_rows"),
    """
    CREATE TABLE tensor_stats (
        merge_id VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        kind VARCHAR NOT NULL,
        shape INTEGER[],
        numel BIGINT,
        delta_norm DOUBLE,
        task_norms DOUBLE[],
        sign_conflict DOUBLE,
        cosines_json VARCHAR,
        UNIQUE (merge_id, tensor)
    )
    """,
    """
    CREATE TABLE model_stats (
        merge_id VARCHAR PRIMARY KEY,
        model_delta_norm DOUBLE,
        model_task_norms DOUBLE[],
        model_cosines_json VARCHAR
    )
    """,
    """
    CREATE TABLE spectra (
        merge_id VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        source VARCHAR NOT NULL CHECK (source IN ('task', 'delta')),
        idx INTEGER NOT NULL,
        singular_values DOUBLE[],
        effective_rank DOUBLE,
        UNIQUE (merge_id, tensor, source, idx)
    )
    """,
    "CREATE SEQUENCE jobs_seq",
    """
    CREATE TABLE jobs (
        id VARCHAR PRIMARY KEY,
        seq BIGINT NOT NULL DEFAULT nextval('jobs_seq'),
        kind VARCHAR NOT NULL,
        params_json VARCHAR NOT NULL,
        status VARCHAR NOT NULL
            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
        progress DOUBLE NOT NULL DEFAULT 0,
        message VARCHAR NOT NULL DEFAULT '',
        log VARCHAR NOT NULL DEFAULT '',
        error VARCHAR,
        created_at TIMESTAMP NOT NULL,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        pid INTEGER,
        owner VARCHAR,
        temp_paths_json VARCHAR NOT NULL DEFAULT '[]',
        result_json VARCHAR,
        attempt INTEGER NOT NULL DEFAULT 0,
        cancel_requested BOOLEAN NOT NULL DEFAULT false
    )
    """,
]

# Version 2: studies (the paper's protocol) and the link from a merge to its study subset.
_V2 = [
    """
    CREATE TABLE studies (
        id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        base VARCHAR NOT NULL,
        pool_json VARCHAR NOT NULL,
        methods_json VARCHAR NOT NULL,
        sizes_json VARCHAR NOT NULL,
        subsets_per_size INTEGER NOT NULL,
        seed BIGINT NOT NULL,
        suite VARCHAR NOT NULL,
        "limit" INTEGER,
        created_at TIMESTAMP NOT NULL,
        status VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE study_subsets (
        study_id VARCHAR NOT NULL,
        n INTEGER NOT NULL,
        subset_id VARCHAR NOT NULL,
        checkpoints VARCHAR[] NOT NULL,
        UNIQUE (study_id, subset_id)
    )
    """,
    "ALTER TABLE merges ADD COLUMN study_id VARCHAR",
    "ALTER TABLE merges ADD COLUMN subset_id VARCHAR",
]

# Version 3: what a merge kept of its task vectors (merging.geometry's kept/dropped mass, ⟨Δ, τ_i⟩ and how
# sign conflicts were resolved), so Compare can explain why methods differ on the same checkpoints.
_V3 = [
    "ALTER TABLE tensor_stats ADD COLUMN task_dots DOUBLE[]",
    "ALTER TABLE tensor_stats ADD COLUMN task_l1 DOUBLE",
    "ALTER TABLE tensor_stats ADD COLUMN dropped_l1 DOUBLE",
    "ALTER TABLE tensor_stats ADD COLUMN conflict_dropped DOUBLE",
    "ALTER TABLE tensor_stats ADD COLUMN conflict_summed DOUBLE",
    "ALTER TABLE model_stats ADD COLUMN model_task_dots DOUBLE[]",
    "ALTER TABLE model_stats ADD COLUMN mass_dropped DOUBLE",
    "ALTER TABLE model_stats ADD COLUMN conflict_dropped DOUBLE",
    "ALTER TABLE model_stats ADD COLUMN conflict_summed DOUBLE",
]

# Version 4: analyses (stats-only passes before merging). Their geometry shares the merge geometry tables,
# keyed by the analysis id ("analysis-…"), so only the record of what was analysed is new.
_V4 = [
    """
    CREATE TABLE analyses (
        id VARCHAR PRIMARY KEY,
        base_ref VARCHAR NOT NULL,
        base_fingerprint VARCHAR,
        checkpoint_refs VARCHAR[] NOT NULL,
        checkpoint_fingerprints VARCHAR[],
        n INTEGER NOT NULL,
        created_at TIMESTAMP NOT NULL,
        seconds DOUBLE,
        device VARCHAR,
        summary_json VARCHAR,
        job_id VARCHAR
    )
    """,
]

# Version 5: identity by content and a bounded Jobs page.
# - eval_rows gain the evaluation dtype and device in their key (a bfloat16 GPU score is not a float32 CPU
#   score); rows written before carry '' for both, so they are never served for a keyed lookup (rescored).
#   DuckDB cannot change a UNIQUE constraint in place, so the table is rebuilt with its rows.
# - merges.superseded_at: a study unit whose checkpoints changed since it ran stays for the record, marked.
# - studies.inputs_json: the fingerprints of the base and pool the study last ran on (ref -> fingerprint).
# - jobs.group_id: the launch that created a job (a merge and the evaluations it queued share one).
_V5 = [
    _create_eval_rows(
        "eval_rows_v5",
        extra=(("dtype", "VARCHAR NOT NULL DEFAULT ''"), ("device", "VARCHAR NOT NULL DEFAULT ''")),
        key=f"{_EVAL_ROWS_V1_KEY}, dtype, device",
    ),
    f"INSERT INTO eval_rows_v5 ({_EVAL_ROWS_V1_NAMES}, dtype, device) "
    f"SELECT {_EVAL_ROWS_V1_NAMES}, '', '' FROM eval_rows",
    "DROP TABLE eval_rows",
    "ALTER TABLE eval_rows_v5 RENAME TO eval_rows",
    "ALTER TABLE merges ADD COLUMN superseded_at TIMESTAMP",
    "ALTER TABLE studies ADD COLUMN inputs_json VARCHAR",
    "ALTER TABLE jobs ADD COLUMN group_id VARCHAR",
]

MIGRATIONS: list[list[str]] = [_V1, _V2, _V3, _V4, _V5]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The version a database file is at; 0 for an empty file."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(con: duckdb.DuckDBPyConnection, target: int = SCHEMA_VERSION) -> int:
    """Apply migrations after the file's version up to `target`; returns the version reached."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
    )
    version = current_version(con)
    for number in range(version + 1, target + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in MIGRATIONS[number - 1]:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, current_timestamp)", [number])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        version = number
    return version
