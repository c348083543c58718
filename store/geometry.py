"""Geometry the merge engine records: per-tensor stats, whole-model stats, singular spectra.

The store receives plain mappings (the engine's dataclasses turned into dicts by the caller), so it never
imports the engine. The layer index and the kind of each tensor are derived here from its name, so the
pages can group by layer and by block without parsing names themselves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from store.db import StoreCore

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def parse_layer(tensor: str) -> int | None:
    """`model.layers.3.mlp.up_proj.weight` -> 3; tensors outside the decoder stack -> None."""
    match = _LAYER.search(tensor)
    return int(match.group(1)) if match else None


def tensor_kind(tensor: str) -> str:
    """One of embed, head, norm, attn, mlp, other (norms inside attention, e.g. q_norm, count as norm)."""
    name = tensor.lower()
    parts = name.split(".")
    if any(p in ("embed_tokens", "wte", "wpe", "embeddings", "embed") for p in parts):
        return "embed"
    if "lm_head" in parts:
        return "head"
    if any("norm" in p or p.startswith("ln_") for p in parts):
        return "norm"
    if any(p in ("self_attn", "attn", "attention", "self_attention") for p in parts):
        return "attn"
    if any(p in ("mlp", "feed_forward", "ffn") for p in parts):
        return "mlp"
    return "other"


def _floats(values: Iterable[Any] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# Named in inserts, so a later migration's columns never shift the values.
_TENSOR_COLUMNS = (
    "merge_id",
    "tensor",
    "layer",
    "kind",
    "shape",
    "numel",
    "delta_norm",
    "task_norms",
    "sign_conflict",
    "cosines_json",
    "task_dots",
    "task_l1",
    "dropped_l1",
    "conflict_dropped",
    "conflict_summed",
)
_MODEL_COLUMNS = (
    "merge_id",
    "model_delta_norm",
    "model_task_norms",
    "model_cosines_json",
    "model_task_dots",
    "mass_dropped",
    "conflict_dropped",
    "conflict_summed",
)


class GeometryMixin(StoreCore):
    def put_merge_stats(
        self,
        merge_id: str,
        *,
        tensors: Iterable[Mapping[str, Any]] = (),
        spectra: Iterable[Mapping[str, Any]] = (),
        model: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one merge's geometry in one transaction, replacing whatever was stored for it before."""
        with self.transaction() as cur:
            self._put_stats(cur, merge_id, tensors, spectra, model)

    @staticmethod
    def _put_stats(
        cur,
        merge_id: str,
        tensors: Iterable[Mapping[str, Any]],
        spectra: Iterable[Mapping[str, Any]],
        model: Mapping[str, Any] | None,
    ) -> None:
        """put_merge_stats inside the caller's transaction (an analysis stores its stats with its record)."""
        tensor_rows = [
            [
                merge_id,
                t["name"],
                parse_layer(t["name"]),
                tensor_kind(t["name"]),
                [int(s) for s in t.get("shape") or ()],
                int(t["numel"]) if t.get("numel") is not None else None,
                _finite_or_none(t.get("delta_norm")),
                _floats(t.get("task_norms")),
                _finite_or_none(t.get("sign_conflict")),
                json.dumps(t.get("cosines")),
                _floats(t.get("task_dots")),
                _finite_or_none(t.get("task_l1")),
                _finite_or_none(t.get("dropped_l1")),
                _finite_or_none(t.get("conflict_dropped")),
                _finite_or_none(t.get("conflict_summed")),
            ]
            for t in tensors
        ]
        spectrum_rows = [
            [
                merge_id,
                s["tensor"],
                s["source"],
                int(s.get("index") or 0),
                _floats(s.get("singular_values")),
                _finite_or_none(s.get("effective_rank")),
            ]
            for s in spectra
        ]
        for table in ("tensor_stats", "model_stats", "spectra"):
            cur.execute(f"DELETE FROM {table} WHERE merge_id = ?", [merge_id])
        if tensor_rows:
            cur.executemany(
                f"INSERT INTO tensor_stats ({', '.join(_TENSOR_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_TENSOR_COLUMNS))})",
                tensor_rows,
            )
        if spectrum_rows:
            cur.executemany("INSERT INTO spectra VALUES (?, ?, ?, ?, ?, ?)", spectrum_rows)
        if model is not None:
            cur.execute(
                f"INSERT INTO model_stats ({', '.join(_MODEL_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_MODEL_COLUMNS))})",
                [
                    merge_id,
                    _finite_or_none(model.get("model_delta_norm")),
                    _floats(model.get("model_task_norms")),
                    json.dumps(model.get("model_cosines")),
                    _floats(model.get("model_task_dots")),
                    _finite_or_none(model.get("mass_dropped")),
                    _finite_or_none(model.get("conflict_dropped")),
                    _finite_or_none(model.get("conflict_summed")),
                ],
            )

    def tensor_stats_df(self, merge_id: str | Iterable[str]) -> pd.DataFrame:
        """Per-tensor stats of one merge, or of several (a list of ids: Compare reads them together)."""
        if isinstance(merge_id, str):
            return self._df(
                "SELECT * FROM tensor_stats WHERE merge_id = ? ORDER BY layer NULLS FIRST, tensor", [merge_id]
            )
        return self._df(
            "SELECT * FROM tensor_stats WHERE list_contains(?, merge_id) "
            "ORDER BY merge_id, layer NULLS FIRST, tensor",
            [list(merge_id)],
        )

    def spectra_df(self, merge_id: str, tensor: str | None = None) -> pd.DataFrame:
        if tensor is None:
            return self._df(
                "SELECT * FROM spectra WHERE merge_id = ? ORDER BY tensor, source, idx", [merge_id]
            )
        return self._df(
            "SELECT * FROM spectra WHERE merge_id = ? AND tensor = ? ORDER BY source, idx", [merge_id, tensor]
        )

    def model_stats_df(self, merge_ids: Iterable[str] | None = None) -> pd.DataFrame:
        if merge_ids is None:
            return self._df("SELECT * FROM model_stats")
        return self._df("SELECT * FROM model_stats WHERE list_contains(?, merge_id)", [list(merge_ids)])
