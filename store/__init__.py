"""MergeLab's results database: a versioned DuckDB schema and the only code in MergeLab that writes SQL.

from store import Store
with Store() as db:                      # $MERGELAB_HOME/mergelab.duckdb, migrated on open
    job_id = db.add_job("merge", {...})
    db.jobs_df()                          # pandas DataFrame for the pages
    db.export_table("eval_rows", "scores.parquet", "parquet")
"""

from store.db import EXPORT_FORMATS, TABLES, default_db_path, utcnow, workspace_dir
from store.errors import StoreError
from store.evals import EVAL_COLUMNS
from store.geometry import parse_layer, tensor_kind
from store.jobs import END_STATES, JOB_STATES, RETRYABLE, JobRecord
from store.schema import SCHEMA_VERSION, current_version, migrate
from store.store import Store

__all__ = [
    "EVAL_COLUMNS",
    "END_STATES",
    "EXPORT_FORMATS",
    "JOB_STATES",
    "RETRYABLE",
    "SCHEMA_VERSION",
    "TABLES",
    "JobRecord",
    "Store",
    "StoreError",
    "current_version",
    "default_db_path",
    "migrate",
    "parse_layer",
    "tensor_kind",
    "utcnow",
    "workspace_dir",
]
