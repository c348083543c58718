"""Studies (the paper's protocol): their definition and the checkpoint subsets drawn for them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from store.db import StoreCore, utcnow
from store.errors import StoreError


class StudiesMixin(StoreCore):
    def create_study(
        self,
        *,
        name: str,
        base: str,
        pool: Sequence[str],
        methods: Sequence[Mapping[str, Any]] | Sequence[str],
        sizes: Sequence[int],
        subsets_per_size: int,
        seed: int,
        suite: str,
        limit: int | None = None,
        study_id: str | None = None,
    ) -> str:
        study_id = study_id or uuid.uuid4().hex[:12]
        self._write(
            """
            INSERT INTO studies (id, name, base, pool_json, methods_json, sizes_json, subsets_per_size, seed,
                suite, "limit", created_at, status)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'created')
            """,
            [
                study_id,
                name,
                base,
                json.dumps(list(pool)),
                json.dumps(list(methods), sort_keys=True),
                json.dumps([int(s) for s in sizes]),
                int(subsets_per_size),
                int(seed),
                suite,
                limit,
                utcnow(),
            ],
        )
        return study_id

    def get_study(self, study_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM studies WHERE id = ?", [study_id])
        if not rows:
            raise StoreError(f"No study with id {study_id!r}.")
        row = rows[0]
        for key in ("pool", "methods", "sizes"):
            row[key] = json.loads(row.pop(f"{key}_json"))
        inputs = row.pop("inputs_json", None)
        row["inputs"] = json.loads(inputs) if inputs else {}
        return row

    def set_study_inputs(self, study_id: str, fingerprints: Mapping[str, str]) -> None:
        """Record the content fingerprints (ref -> fingerprint) of the base and pool this run uses."""
        self._write(
            "UPDATE studies SET inputs_json = ? WHERE id = ?",
            [json.dumps(dict(fingerprints), sort_keys=True), study_id],
        )

    def set_study_status(self, study_id: str, status: str) -> None:
        self._write("UPDATE studies SET status = ? WHERE id = ?", [status, study_id])

    def add_study_subsets(self, study_id: str, subsets: Iterable[tuple[int, str, Sequence[str]]]) -> None:
        """Store (n, subset_id, checkpoints) triples; existing subset ids are kept as they are."""
        rows = [[study_id, int(n), sid, list(cks)] for n, sid, cks in subsets]
        self._write_many("INSERT INTO study_subsets VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)

    def study_subsets(self, study_id: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM study_subsets WHERE study_id = ? ORDER BY n, subset_id", [study_id])

    def studies_df(self) -> pd.DataFrame:
        return self._df("SELECT * FROM studies ORDER BY created_at DESC")

    def study_results_df(self, study_id: str) -> pd.DataFrame:
        """One row per (merge, eval row) of the study's finished merges: what the study pages plot."""
        return self._df(
            """
            SELECT m.id AS merge_id, m.config, m.method, m.n, m.subset_id, m.seconds, m.merged_fingerprint,
                   e.task, e.metric, e.value, e.stderr, e.suite_version, e."limit"
            FROM merges m JOIN eval_rows e ON e.fingerprint = m.merged_fingerprint
            JOIN studies s ON s.id = m.study_id AND e.suite = s.suite
                AND e.limit_key = coalesce(s."limit", -1)
            WHERE m.study_id = ? AND m.status = 'done' AND m.superseded_at IS NULL
            QUALIFY row_number() OVER (PARTITION BY m.id, e.task, e.metric ORDER BY e.created_at DESC) = 1
            ORDER BY m.config, m.n, m.subset_id, e.task, e.metric
            """,
            [study_id],
        )
