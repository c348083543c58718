"""Score caches keyed by (model fingerprint, suite version, limit): a base and its checkpoints are scored
once and reused by every merge and study. The jobs layer plugs a DuckDB-backed cache with the same protocol;
the CLI uses `DirectoryScoreCache`, one JSON file per key under `$MERGELAB_HOME/cache/evals`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from evaluation.home import cache_dir
from evaluation.rows import ScoreRow


@runtime_checkable
class ScoreCache(Protocol):
    def get(self, fingerprint: str, suite_version: str, limit: int | None) -> list[ScoreRow] | None:
        """All rows of one evaluation, or None when it was never stored."""

    def put(self, rows: list[ScoreRow]) -> None:
        """Store the rows of one evaluation (all share fingerprint, suite version and limit)."""


class DirectoryScoreCache:
    """JSON files `<root>/<suite_version>/<fingerprint>-<limit>.json`, written atomically."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir("evals")

    def _path(self, fingerprint: str, suite_version: str, limit: int | None) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in fingerprint)
        return self.root / suite_version / f"{safe}-{'all' if limit is None else int(limit)}.json"

    def get(self, fingerprint: str, suite_version: str, limit: int | None) -> list[ScoreRow] | None:
        path = self._path(fingerprint, suite_version, limit)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a corrupt entry is a miss, rewritten by the next put
            return None
        return [ScoreRow.from_dict(d) for d in data["rows"]]

    def put(self, rows: list[ScoreRow]) -> None:
        if not rows:
            return
        first = rows[0]
        if any(
            (r.fingerprint, r.suite_version, r.limit) != (first.fingerprint, first.suite_version, first.limit)
            for r in rows
        ):
            raise ValueError(
                "put() takes the rows of one evaluation (one fingerprint, suite version and limit)"
            )
        path = self._path(first.fingerprint, first.suite_version, first.limit)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"rows": [r.to_dict() for r in rows]}, fh, indent=1)
        os.replace(tmp, path)
