"""Merge records: the recipe, its status and timings, and where the output went (if anywhere)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from store.db import StoreCore, utcnow
from store.errors import StoreError

MERGE_END_STATES = ("done", "failed", "cancelled", "interrupted")


class MergesMixin(StoreCore):
    def begin_merge(
        self,
        *,
        recipe_yaml: str,
        method: str,
        base_fingerprint: str | None,
        checkpoint_refs: Sequence[str],
        checkpoint_fingerprints: Sequence[str] | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        config: str | None = None,
        job_id: str | None = None,
        study_id: str | None = None,
        subset_id: str | None = None,
        merge_id: str | None = None,
    ) -> str:
        """Record a merge that is starting (status running); returns its id."""
        merge_id = merge_id or uuid.uuid4().hex[:16]
        self._write(
            """
            INSERT INTO merges (id, recipe_yaml, method, config, base_fingerprint, checkpoint_refs,
                checkpoint_fingerprints, n, seed, params_json, status, started_at, job_id, study_id,
                subset_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)
            """,
            [
                merge_id,
                recipe_yaml,
                method,
                config or method,
                base_fingerprint,
                list(checkpoint_refs),
                list(checkpoint_fingerprints) if checkpoint_fingerprints is not None else None,
                len(checkpoint_refs),
                seed,
                json.dumps(dict(params or {}), sort_keys=True, default=str),
                utcnow(),
                job_id,
                study_id,
                subset_id,
            ],
        )
        return merge_id

    def finish_merge(
        self,
        merge_id: str,
        status: str,
        *,
        seconds: float | None = None,
        output_path: str | None = None,
        peak_memory_bytes: int | None = None,
        error: str | None = None,
        merged_fingerprint: str | None = None,
    ) -> None:
        if status not in MERGE_END_STATES:
            raise StoreError(f"Unknown merge end state {status!r}; use one of {', '.join(MERGE_END_STATES)}.")
        self._write(
            """
            UPDATE merges SET status = ?, finished_at = ?, seconds = ?, output_path = ?,
                peak_memory_bytes = ?, error = ?, merged_fingerprint = ?
            WHERE id = ?
            """,
            [status, utcnow(), seconds, output_path, peak_memory_bytes, error, merged_fingerprint, merge_id],
        )

    def set_merge_inputs(
        self, merge_id: str, *, base_fingerprint: str | None, checkpoint_fingerprints: Sequence[str | None]
    ) -> None:
        """Fill in the inputs' fingerprints once the engine has read their headers."""
        self._write(
            "UPDATE merges SET base_fingerprint = ?, checkpoint_fingerprints = ? WHERE id = ?",
            [base_fingerprint, list(checkpoint_fingerprints), merge_id],
        )

    def get_merge(self, merge_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM merges WHERE id = ?", [merge_id])
        return rows[0] if rows else None

    def find_study_merges(self, study_id: str, *, include_superseded: bool = False) -> list[dict[str, Any]]:
        """Every merge recorded for a study (any status), oldest first; superseded ones only when asked."""
        live = "" if include_superseded else " AND superseded_at IS NULL"
        return self._rows(f"SELECT * FROM merges WHERE study_id = ?{live} ORDER BY started_at", [study_id])

    def supersede_merge(self, merge_id: str, reason: str) -> None:
        """Mark a merge as no longer current (its inputs changed since it ran): kept for the record, left
        out of study results and of `merges_df` unless asked for. A still-running record is closed too."""
        self._write(
            """
            UPDATE merges SET superseded_at = ?,
                error = CASE WHEN status = 'done' THEN error ELSE coalesce(error, ?) END,
                status = CASE WHEN status = 'running' THEN 'interrupted' ELSE status END,
                finished_at = coalesce(finished_at, ?)
            WHERE id = ? AND superseded_at IS NULL
            """,
            [utcnow(), reason, utcnow(), merge_id],
        )

    def discard_merge(self, merge_id: str) -> None:
        """Delete an unfinished merge and its geometry, so a rerun does not leave duplicates behind."""
        with self.transaction() as cur:
            for table in ("tensor_stats", "model_stats", "spectra"):
                cur.execute(f"DELETE FROM {table} WHERE merge_id = ?", [merge_id])
            cur.execute("DELETE FROM merges WHERE id = ?", [merge_id])

    def interrupt_merges_of_job(self, job_id: str, reason: str) -> int:
        """Mark the job's merges still 'running' as interrupted; returns how many."""
        with self.transaction() as cur:
            n = cur.execute(
                "SELECT count(*) FROM merges WHERE job_id = ? AND status = 'running'", [job_id]
            ).fetchone()[0]
            cur.execute(
                "UPDATE merges SET status = 'interrupted', error = ?, finished_at = ? "
                "WHERE job_id = ? AND status = 'running'",
                [reason, utcnow(), job_id],
            )
        return int(n)

    def merges_df(
        self, study_id: str | None = None, status: str | None = None, *, include_superseded: bool = False
    ) -> pd.DataFrame:
        """Merge records, oldest first; superseded study units (inputs changed since) only when asked."""
        clauses, params = [], []
        if not include_superseded:
            clauses.append("superseded_at IS NULL")
        if study_id is not None:
            clauses.append("study_id = ?")
            params.append(study_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._df(f"SELECT * FROM merges {where} ORDER BY started_at", params)
