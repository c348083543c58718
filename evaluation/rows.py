"""The result row every evaluation produces, and the suite's headline aggregate."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ScoreRow:
    """One task's score for one model. `value` and `stderr` are fractions in [0, 1]; `n` is the number of
    items scored; `limit` the per-task cap that was asked for (None: all); `seconds` the task's wall time;
    `dtype` and `device` how the model ran (e.g. "bfloat16", "cuda"), part of the score cache's key."""

    model: str
    fingerprint: str
    suite: str
    suite_version: str
    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    limit: int | None
    lm_eval_version: str
    seconds: float
    dtype: str | None = None
    device: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScoreRow:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def aggregate(rows: Iterable[ScoreRow]) -> float:
    """The paper's headline: the unweighted mean of the per-task values (a fraction, like the rows)."""
    values = [r.value for r in rows]
    if not values:
        raise ValueError("aggregate() needs at least one row")
    return sum(values) / len(values)
