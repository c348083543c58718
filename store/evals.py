"""Evaluation rows (one score of one metric of one task for one model), idempotent on rerun.

A row is identified by (fingerprint, suite_version, task, metric, limit, dtype, device); writing it again
replaces the value instead of adding a duplicate. `limit` may be None (whole test set); `limit_key` (-1 for
None) carries it into the unique key, since SQL NULLs never collide. dtype and device say how the model ran
when scored ('' when unknown: rows written before schema version 5, never served to a keyed lookup).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from store.db import StoreCore, utcnow
from store.errors import StoreError

EVAL_COLUMNS = (
    "fingerprint",
    "model_name",
    "suite",
    "suite_version",
    "task",
    "metric",
    "value",
    "stderr",
    "n",
    "limit",
    "lm_eval_version",
    "seconds",
    "dtype",
    "device",
)
_INSERT_COLUMNS = (*EVAL_COLUMNS, "limit_key", "created_at", "position")
_REQUIRED = ("fingerprint", "suite", "suite_version", "task", "metric")


def _limit_key(limit: int | None) -> int:
    return -1 if limit is None else int(limit)


class EvalsMixin(StoreCore):
    def put_eval_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert score rows given as mappings with the EVAL_COLUMNS keys; returns how many were written.

        Rows keep their order within one call (`position`), so a cached suite reads back in task order."""
        values = []
        now = utcnow()
        for position, row in enumerate(rows):
            missing = [k for k in _REQUIRED if row.get(k) in (None, "")]
            if missing:
                raise StoreError(f"Evaluation row lacks {', '.join(missing)}: {dict(row)!r}")
            record = {k: row.get(k) for k in EVAL_COLUMNS}
            record["dtype"], record["device"] = record["dtype"] or "", record["device"] or ""
            record.update(
                limit_key=_limit_key(row.get("limit")),
                created_at=now,
                position=int(row.get("position", position)),
            )
            values.append([record[k] for k in _INSERT_COLUMNS])
        names = ", ".join(f'"{c}"' for c in _INSERT_COLUMNS)
        marks = ", ".join("?" for _ in _INSERT_COLUMNS)
        self._write_many(
            f"""
            INSERT INTO eval_rows ({names}) VALUES ({marks})
            ON CONFLICT (fingerprint, suite_version, task, metric, limit_key, dtype, device) DO UPDATE SET
                model_name = excluded.model_name, suite = excluded.suite, value = excluded.value,
                stderr = excluded.stderr, n = excluded.n, lm_eval_version = excluded.lm_eval_version,
                seconds = excluded.seconds, created_at = excluded.created_at,
                position = excluded.position
            """,
            values,
        )
        return len(values)

    def get_eval_rows(
        self,
        fingerprint: str,
        suite_version: str,
        limit: int | None,
        *,
        dtype: str | None = None,
        device: str | None = None,
    ) -> list[dict[str, Any]]:
        """The stored rows of one model on one suite version at one limit, in the order they were written
        (the suite's task order); an empty list when it was never scored.

        dtype and device (e.g. "bfloat16", "cuda") narrow the lookup to scores computed that way: the score
        cache always gives both. Left out, any is accepted and the newest row per task and metric wins."""
        cols = ", ".join(f'"{c}"' for c in EVAL_COLUMNS)
        clauses = ["fingerprint = ?", "suite_version = ?", "limit_key = ?"]
        params: list[Any] = [fingerprint, suite_version, _limit_key(limit)]
        for column, value in (("dtype", dtype), ("device", device)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return self._rows(
            f"SELECT {cols} FROM eval_rows WHERE {' AND '.join(clauses)} "
            "QUALIFY row_number() OVER (PARTITION BY task, metric ORDER BY created_at DESC) = 1 "
            "ORDER BY position, task, metric",
            params,
        )

    def eval_rows_df(
        self, fingerprints: Iterable[str] | None = None, suite: str | None = None
    ) -> pd.DataFrame:
        clauses, params = [], []
        if fingerprints is not None:
            clauses.append("list_contains(?, fingerprint)")
            params.append(list(fingerprints))
        if suite is not None:
            clauses.append("suite = ?")
            params.append(suite)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._df(f"SELECT * EXCLUDE (limit_key) FROM eval_rows {where} ORDER BY created_at", params)
