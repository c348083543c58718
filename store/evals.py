"""Evaluation rows (one score of one metric of one task for one model), idempotent on rerun.

A row is identified by (fingerprint, suite_version, task, metric, limit); writing it again replaces the
value instead of adding a duplicate. `limit` may be None (whole test set); `limit_key` (-1 for None)
carries it into the unique key, since SQL NULLs never collide.
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
)
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
            limit = row.get("limit")
            values.append(
                [row.get(k) for k in EVAL_COLUMNS[:9]]
                + [limit, _limit_key(limit), row.get("lm_eval_version"), row.get("seconds"), now]
                + [int(row.get("position", position))]
            )
        self._write_many(
            """
            INSERT INTO eval_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (fingerprint, suite_version, task, metric, limit_key) DO UPDATE SET
                model_name = excluded.model_name, suite = excluded.suite, value = excluded.value,
                stderr = excluded.stderr, n = excluded.n, lm_eval_version = excluded.lm_eval_version,
                seconds = excluded.seconds, created_at = excluded.created_at,
                position = excluded.position
            """,
            values,
        )
        return len(values)

    def get_eval_rows(self, fingerprint: str, suite_version: str, limit: int | None) -> list[dict[str, Any]]:
        """The stored rows of one model on one suite version at one limit, in the order they were written
        (the suite's task order); an empty list when it was never scored."""
        cols = ", ".join(f'"{c}"' for c in EVAL_COLUMNS)
        return self._rows(
            f"SELECT {cols} FROM eval_rows WHERE fingerprint = ? AND suite_version = ? AND limit_key = ? "
            "ORDER BY position, task, metric",
            [fingerprint, suite_version, _limit_key(limit)],
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
