"""Registering checkpoints and describing them: the glue between `merging.open_checkpoint` and the store.

Registration reads only headers (config and safetensors headers; for a Hub id over HTTP with ranged reads,
never the weights), so it is quick enough to run in the page script; the fingerprint is the model's
identity everywhere (scores, merges), so the same files registered twice are one model. Hub weights are
downloaded by a background `download` job or by the merge that needs them, into MERGELAB_HOME.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

import merging

KINDS = ("base", "checkpoint")


def dominant_dtype(ck: Any) -> str | None:
    """The dtype most of the checkpoint's parameters are stored in (by element count)."""
    counts: Counter[str] = Counter()
    for info in ck.tensors.values():
        counts[str(info.dtype)] += info.numel
    return counts.most_common(1)[0][0] if counts else None


def default_name(ref: str) -> str:
    """A display name from a path ("…/llama-ft3" -> "llama-ft3") or a Hub id (kept whole)."""
    p = Path(ref)
    if p.exists():
        return p.resolve().name
    return ref.strip().rstrip("/")


def describe(ck: Any) -> dict[str, Any]:
    """Headline facts of an opened checkpoint, as shown on the Models page."""
    return {
        "architecture": ck.architecture,
        "num_parameters": int(ck.num_parameters),
        "dtype": dominant_dtype(ck),
        "vocab_size": ck.vocab_size,
        "tensors": len(ck.tensors),
        "tied_embeddings": bool(ck.tied_embeddings),
        "fingerprint": ck.fingerprint,
        "remote": bool(ck.remote),
    }


def tensor_table(ck: Any) -> pd.DataFrame:
    """Every stored tensor: name, shape, dtype, number of elements."""
    rows = [
        {
            "tensor": name,
            "shape": "×".join(str(d) for d in info.shape),
            "dtype": info.dtype,
            "numel": info.numel,
        }
        for name, info in ck.tensors.items()
    ]
    return pd.DataFrame(rows, columns=["tensor", "shape", "dtype", "numel"])


def register(db: Any, ref: str, kind: str, name: str | None = None) -> dict[str, Any]:
    """Open `ref` (local folder or Hub id), record it in the store; returns `describe` plus ref and name.

    Raises merging's CheckpointError (missing folder, no safetensors, …) with the reason a user can fix.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    ref = str(ref).strip()
    if not ref:
        raise ValueError("Give a local folder or a Hugging Face Hub id (owner/name).")
    ck = merging.open_checkpoint(ref, download=False)
    try:
        info = describe(ck)
        name = (name or "").strip() or default_name(ref)
        db.register_model(
            info["fingerprint"],
            kind,
            ref,
            name=name,
            architecture=info["architecture"],
            num_parameters=info["num_parameters"],
            vocab_size=info["vocab_size"],
            dtype=info["dtype"],
        )
    finally:
        ck.close()
    return {**info, "ref": ref, "name": name, "kind": kind}


def compatibility(base_ref: str, refs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per checkpoint: status, counts, details; every issue as a row) for the chosen set."""
    base = merging.open_checkpoint(base_ref, download=False)
    cks = [merging.open_checkpoint(r, download=False) for r in refs]
    try:
        report = merging.check_compatibility(base, cks)
        matrix = pd.DataFrame(report.matrix())
        issues = pd.DataFrame(report.rows())
    finally:
        for c in [base, *cks]:
            c.close()
    return matrix, issues


def register_zoo(db: Any, manifest: Any) -> int:
    """Register every model of a built zoo that the store does not know yet; returns how many were added.

    The build-zoo job only writes files; doing this on the app side means a zoo built by the CLI or by a
    job shows up on the Models and Merge pages the next time any page runs.
    """
    known = set(db.models_df()["ref"]) if db.count("models") else set()
    added = 0
    for m in manifest.models:
        ref = str(Path(manifest.root) / m.path)
        if ref in known:
            continue
        register(db, ref, "base" if m.kind == "base" else "checkpoint", name=m.name)
        added += 1
    return added
