"""Compatibility of checkpoints with the base, decided from headers alone (methods.md §4).

Same architecture, same tensor set, same shapes; the only tolerated differences are the vocabulary rows of
`embed_tokens` / `lm_head` (cut or zero-padded to the base's rows under policy `base`) and tied versus
untied output heads (the base decides: a tied base stays tied). Everything else is a refusal naming the
checkpoint, the tensor and both shapes. The report also tells the engine which tensor to read from each
checkpoint for every output tensor (`sources`), so the engine never re-derives these rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from merging.checkpoint import Checkpoint
from merging.errors import CompatibilityError

VOCAB_POLICIES = ("base",)
Severity = Literal["refusal", "adjustment"]


def is_vocab_tensor(name: str) -> bool:
    """Tensors whose first axis is the vocabulary."""
    return "embed_tokens" in name or "lm_head" in name


def adjust_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Cut or zero-pad the first axis to `rows` (policy `base`)."""
    n = tensor.shape[0]
    if n == rows:
        return tensor
    if n > rows:
        return tensor[:rows]
    return torch.cat([tensor, tensor.new_zeros((rows - n, *tensor.shape[1:]))], dim=0)


@dataclass(frozen=True)
class TensorSource:
    """Where a checkpoint's value for one output tensor comes from: a stored name, and the row count to
    cut or pad it to (None: used as stored), or, for a merged tokenizer, the stored row of every output
    row (`row_map`, -1 where this checkpoint lacks the token; tokenizer.apply_vocab completes those)."""

    name: str
    rows: int | None = None
    row_map: tuple[int, ...] | None = None


def fit_source(tensor: torch.Tensor, src: TensorSource) -> torch.Tensor:
    """A stored tensor fitted to its output rows: permuted by `row_map` (absent rows zero), or cut/padded."""
    if src.row_map is not None:
        idx = torch.tensor(src.row_map, dtype=torch.long)
        keep = idx >= 0
        out = tensor.new_zeros((len(src.row_map), *tensor.shape[1:]))
        out[keep] = tensor[idx[keep]]
        return out
    if src.rows is not None:
        return adjust_rows(tensor, src.rows)
    return tensor


@dataclass(frozen=True)
class CompatIssue:
    """One finding for one checkpoint: a refusal (merge impossible) or an adjustment (merge adapts)."""

    checkpoint: str
    index: int
    severity: Severity
    code: str
    tensor: str | None
    message: str
    base_shape: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None

    def to_row(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "index": self.index,
            "severity": self.severity,
            "code": self.code,
            "tensor": self.tensor,
            "message": self.message,
            "base_shape": list(self.base_shape) if self.base_shape is not None else None,
            "shape": list(self.shape) if self.shape is not None else None,
        }


@dataclass
class CompatReport:
    """Outcome of `check_compatibility`: issues per checkpoint and, for the engine, the read plan."""

    base: str
    checkpoints: list[str]
    vocab_policy: str
    tensor_names: list[str]
    sources: list[dict[str, TensorSource]]
    issues: list[CompatIssue] = field(default_factory=list)

    @property
    def refusals(self) -> list[CompatIssue]:
        return [i for i in self.issues if i.severity == "refusal"]

    @property
    def adjustments(self) -> list[CompatIssue]:
        return [i for i in self.issues if i.severity == "adjustment"]

    @property
    def ok(self) -> bool:
        return not self.refusals

    def raise_if_refused(self) -> None:
        refusals = self.refusals
        if refusals:
            more = f" (and {len(refusals) - 1} more refusals)" if len(refusals) > 1 else ""
            raise CompatibilityError(refusals[0].message + more)

    def matrix(self) -> list[dict]:
        """One row per checkpoint for the app's compatibility matrix: status and counts."""
        rows = []
        for idx, ref in enumerate(self.checkpoints):
            mine = [i for i in self.issues if i.index == idx]
            n_ref = sum(i.severity == "refusal" for i in mine)
            n_adj = len(mine) - n_ref
            rows.append(
                {
                    "checkpoint": ref,
                    "status": "refused" if n_ref else ("adjusted" if n_adj else "ok"),
                    "refusals": n_ref,
                    "adjustments": n_adj,
                    "details": "; ".join(i.message for i in mine[:3]) + (" …" if len(mine) > 3 else ""),
                }
            )
        return rows

    def rows(self) -> list[dict]:
        return [i.to_row() for i in self.issues]


def check_compatibility(
    base: Checkpoint, checkpoints: list[Checkpoint], vocab_policy: str = "base"
) -> CompatReport:
    """Compare every checkpoint's headers with the base's. Reads no tensor data."""
    if vocab_policy not in VOCAB_POLICIES:
        raise CompatibilityError(
            f"unknown vocab_policy {vocab_policy!r}; supported: {', '.join(VOCAB_POLICIES)}"
        )
    names = sorted(base.tensors, key=lambda n: (str(base.tensors[n].file), base.tensors[n].offset, n))
    report = CompatReport(base.ref, [c.ref for c in checkpoints], vocab_policy, names, [])
    for idx, ck in enumerate(checkpoints):
        issues, sources = _compare(base, ck, idx, names)
        report.issues.extend(issues)
        report.sources.append(sources)
    return report


def _compare(
    base: Checkpoint, ck: Checkpoint, idx: int, names: list[str]
) -> tuple[list[CompatIssue], dict[str, TensorSource]]:
    issues: list[CompatIssue] = []
    sources: dict[str, TensorSource] = {}

    def add(severity: Severity, code: str, tensor: str | None, msg: str, bshape=None, shape=None) -> None:
        issues.append(CompatIssue(ck.ref, idx, severity, code, tensor, msg, bshape, shape))

    if (base.architecture, base.model_type) != (ck.architecture, ck.model_type):
        add(
            "refusal",
            "architecture",
            None,
            f"checkpoint {ck.ref!r} is {ck.architecture or ck.model_type}, "
            f"base {base.ref!r} is {base.architecture or base.model_type}: other architecture",
        )
        return issues, sources

    ck_embed = next((n for n in ck.tensors if "embed_tokens" in n), None)
    for name in names:
        binfo = base.tensors[name]
        source = name
        if name not in ck.tensors:
            if "lm_head" in name and ck.tied_embeddings and ck_embed is not None:
                source = ck_embed
                add(
                    "adjustment",
                    "tied_head",
                    name,
                    f"checkpoint {ck.ref!r} ties its embeddings: its {ck_embed!r} stands in for {name!r}",
                )
            else:
                add(
                    "refusal",
                    "missing_tensor",
                    name,
                    f"checkpoint {ck.ref!r} has no tensor {name!r} (base {base.ref!r} has shape "
                    f"{tuple(binfo.shape)}): other tensor set",
                    binfo.shape,
                )
                continue
        shape = ck.tensors[source].shape
        if shape == binfo.shape:
            sources[name] = TensorSource(source)
        elif is_vocab_tensor(name) and len(shape) == len(binfo.shape) and shape[1:] == binfo.shape[1:]:
            verb = "cut" if shape[0] > binfo.shape[0] else "zero-padded"
            sources[name] = TensorSource(source, binfo.shape[0])
            add(
                "adjustment",
                "vocab_rows",
                name,
                f"checkpoint {ck.ref!r}: {name!r} has {shape[0]} vocabulary rows, {verb} to the base's "
                f"{binfo.shape[0]}",
                binfo.shape,
                shape,
            )
        else:
            add(
                "refusal",
                "shape",
                name,
                f"checkpoint {ck.ref!r}: tensor {name!r} has shape {tuple(shape)}, base {base.ref!r} has "
                f"{tuple(binfo.shape)}",
                binfo.shape,
                shape,
            )
    for name in sorted(set(ck.tensors) - set(base.tensors)):
        if "lm_head" in name and base.tied_embeddings:
            add(
                "adjustment",
                "dropped_head",
                name,
                f"checkpoint {ck.ref!r} stores {name!r} but the base ties its embeddings: the merge "
                "stays tied and this head is not used",
            )
        else:
            add(
                "refusal",
                "extra_tensor",
                name,
                f"checkpoint {ck.ref!r} has tensor {name!r} (shape {tuple(ck.tensors[name].shape)}) that "
                f"base {base.ref!r} lacks: other tensor set",
                None,
                ck.tensors[name].shape,
            )
    return issues, sources
