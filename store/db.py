"""The Store: one DuckDB connection per process, per-thread cursors, serialized writes, table export.

DuckDB allows one writing process per file, and one connection object must not be shared by threads, so
the Store owns the connection and hands each thread its own cursor (`Store.cursor()`); every write goes
through one lock so concurrent workers never race each other's transactions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from store.errors import StoreError
from store.schema import SCHEMA_VERSION, current_version, migrate

TABLES = (
    "models",
    "merges",
    "eval_rows",
    "tensor_stats",
    "model_stats",
    "spectra",
    "jobs",
    "studies",
    "study_subsets",
    "analyses",
    "schema_version",
)
EXPORT_FORMATS = ("csv", "parquet")


def workspace_dir() -> Path:
    """MERGELAB_HOME, default ./workspace: where every piece of MergeLab state lives."""
    return Path(os.environ.get("MERGELAB_HOME", "workspace"))


def default_db_path() -> Path:
    return workspace_dir() / "mergelab.duckdb"


def utcnow() -> datetime:
    """Naive UTC timestamp, the form every TIMESTAMP column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


class StoreCore:
    """Connection, cursors, write lock, migrations and export; the record mixins build on it."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            raise StoreError(
                f"Cannot open the MergeLab database {self.path}: {exc}. Another MergeLab process (the app or "
                "a CLI run) probably holds it; stop that process or point MERGELAB_HOME at another workspace."
            ) from exc
        found = current_version(self._con)
        if found > SCHEMA_VERSION:
            self._con.close()
            raise StoreError(
                f"{self.path} has schema version {found}, newer than this MergeLab understands "
                f"({SCHEMA_VERSION}); upgrade MergeLab or use another workspace."
            )
        self.schema_version = migrate(self._con)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._closed = False

    # --- connection handling -------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's own cursor on the shared database (created on first use)."""
        if self._closed:
            raise StoreError("The store is closed.")
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                cur = self._con.cursor()
                self._cursors.append(cur)
            self._local.cursor = cur
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the write lock and run the body in one transaction on this thread's cursor."""
        with self._lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _write(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._lock:
            self.cursor().execute(sql, params or [])

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self.transaction() as cur:
            cur.executemany(sql, rows)

    def _rows(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.cursor().execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _df(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        return self.cursor().execute(sql, params or []).df()

    def close(self) -> None:
        """Close every cursor and the connection (a checkpoint of the WAL happens here)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            for cur in self._cursors:
                with suppress(duckdb.Error):
                    cur.close()
            self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- generic table access -----------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """A whole table as a DataFrame (for export pages and debugging)."""
        self._check_table(name)
        return self._df(f"SELECT * FROM {name}")

    def count(self, name: str) -> int:
        self._check_table(name)
        return int(self.cursor().execute(f"SELECT count(*) FROM {name}").fetchone()[0])

    def export_table(self, name: str, path: str | Path, fmt: str = "csv") -> Path:
        """Write one table to CSV (with header) or Parquet; returns the path written."""
        self._check_table(name)
        fmt = fmt.lower()
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        literal = str(out).replace("'", "''")
        options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet"
        self.cursor().execute(f"COPY (SELECT * FROM {name}) TO '{literal}' ({options})")
        return out

    @staticmethod
    def _check_table(name: str) -> None:
        if name not in TABLES:
            raise StoreError(f"Unknown table {name!r}; the tables are: {', '.join(TABLES)}.")
