"""Analyses: stats-only passes over a base and checkpoints (no merge, nothing written to disk).

An analysis is stored like a merge's stats: its per-tensor rows, whole-model figures and spectra go into
the same geometry tables (keyed by the analysis id, which never collides with a merge id), so the pages
draw both with the same code. The `analyses` row says what was analysed, when and how long it took, plus
the layer ranking the engine computed. It is written once, in one transaction, when the pass has finished:
an analysis that failed or was cancelled leaves nothing behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from store.db import StoreCore, utcnow
from store.errors import StoreError
from store.geometry import GeometryMixin

ANALYSIS_PREFIX = "analysis-"


class AnalysesMixin(GeometryMixin, StoreCore):
    def put_analysis(
        self,
        *,
        base_ref: str,
        checkpoint_refs: Sequence[str],
        fingerprints: Mapping[str, str] | None = None,
        summary: Mapping[str, Any] | None = None,
        tensors: Iterable[Mapping[str, Any]] = (),
        spectra: Iterable[Mapping[str, Any]] = (),
        seconds: float | None = None,
        device: str | None = None,
        job_id: str | None = None,
        analysis_id: str | None = None,
    ) -> str:
        """Record a finished analysis and its geometry; returns its id ("analysis-…")."""
        analysis_id = analysis_id or f"{ANALYSIS_PREFIX}{uuid.uuid4().hex[:12]}"
        if not analysis_id.startswith(ANALYSIS_PREFIX):
            raise StoreError(f"Analysis ids start with {ANALYSIS_PREFIX!r}, got {analysis_id!r}.")
        fps = dict(fingerprints or {})
        summary = dict(summary or {})
        with self.transaction() as cur:
            cur.execute("DELETE FROM analyses WHERE id = ?", [analysis_id])
            cur.execute(
                "INSERT INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    analysis_id,
                    str(base_ref),
                    fps.get(str(base_ref)),
                    [str(r) for r in checkpoint_refs],
                    [fps.get(str(r)) for r in checkpoint_refs],
                    len(checkpoint_refs),
                    utcnow(),
                    seconds,
                    device,
                    json.dumps(summary, default=float),
                    job_id,
                ],
            )
            self._put_stats(cur, analysis_id, tensors, spectra, summary)
        return analysis_id

    def get_analysis(self, analysis_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM analyses WHERE id = ?", [analysis_id])
        if not rows:
            raise StoreError(f"No analysis with id {analysis_id!r}.")
        row = rows[0]
        row["summary"] = json.loads(row.pop("summary_json") or "{}")
        return row

    def analyses_df(self) -> pd.DataFrame:
        """Every analysis, newest first (without the summary JSON; get_analysis has it)."""
        return self._df(
            "SELECT id, base_ref, base_fingerprint, checkpoint_refs, checkpoint_fingerprints, n, created_at, "
            "seconds, device, job_id FROM analyses ORDER BY created_at DESC"
        )

    def delete_analysis(self, analysis_id: str) -> None:
        with self.transaction() as cur:
            for table in ("tensor_stats", "model_stats", "spectra"):
                cur.execute(f"DELETE FROM {table} WHERE merge_id = ?", [analysis_id])
            cur.execute("DELETE FROM analyses WHERE id = ?", [analysis_id])
