"""The Store: one DuckDB connection per process, a fixed pool of cursors, serialized writes, table export.

DuckDB allows one writing process per file, and one cursor must not be used by two threads at once, so the
Store owns the connection and lends cursors from a pool of at most POOL_SIZE (`with db.cursor() as cur:`).
A cursor per thread kept forever would leak: Streamlit runs every rerun on a short-lived thread. Every write
goes through one lock so concurrent workers never race each other's transactions.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from mergelab_home import database_path, home_dir
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
POOL_SIZE = 4  # DuckDB cursors per store, shared by every thread
POOL_WAIT_SECONDS = 60.0


def workspace_dir() -> Path:
    """MERGELAB_HOME, default ./workspace: where every piece of MergeLab state lives (mergelab_home.py)."""
    return home_dir()


def default_db_path() -> Path:
    return database_path()


def utcnow() -> datetime:
    """Naive UTC timestamp, the form every TIMESTAMP column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


_LIVE_STORES: weakref.WeakSet[StoreCore] = weakref.WeakSet()


def cursors_open_total() -> int:
    """DuckDB cursors held by every open Store of this process (a leak shows here first)."""
    return sum(s.cursors_open for s in list(_LIVE_STORES) if not s._closed)


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
        self._pool_lock = threading.Lock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._idle: queue.LifoQueue[duckdb.DuckDBPyConnection] = queue.LifoQueue()
        self._closed = False
        _LIVE_STORES.add(self)

    # --- connection handling -------------------------------------------------------------------
    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """`with db.cursor() as cur:` a cursor from the fixed pool, returned when the block ends.

        At most POOL_SIZE cursors ever exist, whatever the number of threads (Streamlit reruns each page on
        a fresh thread); a thread that already holds one (inside a transaction) gets the same one back, so
        nested reads see the transaction's writes."""
        held = getattr(self._local, "held", None)
        if held is not None:
            self._local.depth += 1
            try:
                yield held
            finally:
                self._local.depth -= 1
            return
        cur = self._acquire()
        self._local.held, self._local.depth = cur, 1
        try:
            yield cur
        finally:
            self._local.held = None
            self._release(cur)

    def _acquire(self) -> duckdb.DuckDBPyConnection:
        if self._closed:
            raise StoreError("The store is closed.")
        with self._pool_lock:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                if len(self._cursors) < POOL_SIZE:
                    cur = self._con.cursor()
                    self._cursors.append(cur)
                    return cur
        try:
            cur = self._idle.get(timeout=POOL_WAIT_SECONDS)
        except queue.Empty:
            raise StoreError(
                f"All {POOL_SIZE} database cursors stayed busy for {POOL_WAIT_SECONDS:.0f} s; "
                "a query is stuck or far too slow."
            ) from None
        if self._closed:
            raise StoreError("The store is closed.")
        return cur

    def _release(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._idle.put(cur)

    @property
    def cursors_open(self) -> int:
        """How many DuckDB cursors this store has ever opened (bounded by POOL_SIZE)."""
        return len(self._cursors)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the write lock and run the body in one transaction on one pooled cursor."""
        with self._lock, self.cursor() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _write(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._lock, self.cursor() as cur:
            cur.execute(sql, params or [])

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self.transaction() as cur:
            cur.executemany(sql, rows)

    def _rows(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        with self.cursor() as cur:
            cur.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _df(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        with self.cursor() as cur:
            return cur.execute(sql, params or []).df()

    def _scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        with self.cursor() as cur:
            row = cur.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

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
        return int(self._scalar(f"SELECT count(*) FROM {name}"))

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
        with self.cursor() as cur:
            cur.execute(f"COPY (SELECT * FROM {name}) TO '{literal}' ({options})")
        return out

    @staticmethod
    def _check_table(name: str) -> None:
        if name not in TABLES:
            raise StoreError(f"Unknown table {name!r}; the tables are: {', '.join(TABLES)}.")
