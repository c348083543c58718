"""The DuckDB-backed implementation of evaluation's ScoreCache protocol (store may not import evaluation,
so the adapter between ScoreRow and the store's plain rows lives here)."""

from __future__ import annotations

from typing import Any

from store import Store


class StoreScoreCache:
    """get/put of one evaluation's rows, keyed by (fingerprint, suite version, limit, dtype, device)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(
        self,
        fingerprint: str,
        suite_version: str,
        limit: int | None,
        *,
        dtype: str | None = None,
        device: str | None = None,
    ):
        from evaluation import ScoreRow

        rows = self.store.get_eval_rows(fingerprint, suite_version, limit, dtype=dtype, device=device)
        if not rows:
            return None
        return [ScoreRow.from_dict(row_from_store(r)) for r in rows]

    def put(self, rows) -> None:
        self.store.put_eval_rows([row_to_store(r) for r in rows])


def row_to_store(row: Any) -> dict[str, Any]:
    """A ScoreRow (or its dict) as the store's eval row mapping (`model` is stored as model_name)."""
    data = row.to_dict() if hasattr(row, "to_dict") else dict(row)
    data["model_name"] = data.pop("model", data.get("model_name"))
    return data


def row_from_store(row: dict[str, Any]) -> dict[str, Any]:
    data = dict(row)
    data["model"] = data.pop("model_name", None)
    return data
