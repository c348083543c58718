"""Registered models (base, checkpoint, merged), keyed by their content fingerprint."""

from __future__ import annotations

from typing import Any

import pandas as pd

from store.db import StoreCore, utcnow
from store.errors import StoreError

MODEL_KINDS = ("base", "checkpoint", "merged")


class ModelsMixin(StoreCore):
    def register_model(
        self,
        fingerprint: str,
        kind: str,
        ref: str,
        *,
        name: str | None = None,
        architecture: str | None = None,
        num_parameters: int | None = None,
        vocab_size: int | None = None,
        dtype: str | None = None,
    ) -> None:
        """Insert a model, or refresh its descriptive columns; the first registration time is kept."""
        if kind not in MODEL_KINDS:
            raise StoreError(f"Unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}.")
        self._write(
            """
            INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (fingerprint) DO UPDATE SET
                kind = excluded.kind, ref = excluded.ref, name = coalesce(excluded.name, models.name),
                architecture = coalesce(excluded.architecture, models.architecture),
                num_parameters = coalesce(excluded.num_parameters, models.num_parameters),
                vocab_size = coalesce(excluded.vocab_size, models.vocab_size),
                dtype = coalesce(excluded.dtype, models.dtype)
            """,
            [fingerprint, kind, ref, name, architecture, num_parameters, vocab_size, dtype, utcnow()],
        )

    def get_model(self, fingerprint: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM models WHERE fingerprint = ?", [fingerprint])
        return rows[0] if rows else None

    def models_df(self, kind: str | None = None) -> pd.DataFrame:
        if kind is None:
            return self._df("SELECT * FROM models ORDER BY registered_at")
        return self._df("SELECT * FROM models WHERE kind = ? ORDER BY registered_at", [kind])
