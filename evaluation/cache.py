"""Score caches keyed by (model fingerprint, suite version, limit, dtype, device): a base and its checkpoints
are scored once per way of running them and reused by every merge and study. The jobs layer plugs a
DuckDB-backed cache with the same protocol; the CLI uses `DirectoryScoreCache`, one JSON file per key under
`$MERGELAB_HOME/cache/evals`."""

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
    def get(
        self,
        fingerprint: str,
        suite_version: str,
        limit: int | None,
        *,
        dtype: str | None = None,
        device: str | None = None,
    ) -> list[ScoreRow] | None:
        """All rows of one evaluation, or None when it was never stored."""

    def put(self, rows: list[ScoreRow]) -> None:
        """Store the rows of one evaluation (all share fingerprint, suite version, limit, dtype, device)."""


class DirectoryScoreCache:
    """JSON files `<root>/<suite_version>/<fingerprint>-<limit>-<dtype>-<device>.json`, atomic writes; a get
    without dtype and device takes the newest entry of any."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir("evals")

    def _path(
        self, fingerprint: str, suite_version: str, limit: int | None, dtype: str | None, device: str | None
    ) -> Path:
        def safe(text: str) -> str:
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

        how = f"{safe(dtype) if dtype else '*'}-{safe(device) if device else '*'}"
        name = f"{safe(fingerprint)}-{'all' if limit is None else int(limit)}-{how}.json"
        return self.root / safe(suite_version) / name

    def get(
        self,
        fingerprint: str,
        suite_version: str,
        limit: int | None,
        *,
        dtype: str | None = None,
        device: str | None = None,
    ) -> list[ScoreRow] | None:
        path = self._path(fingerprint, suite_version, limit, dtype, device)
        if "*" in path.name:
            found = sorted(path.parent.glob(path.name), key=lambda p: p.stat().st_mtime_ns)
            if not found:
                return None
            path = found[-1]
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
        key = (first.fingerprint, first.suite_version, first.limit, first.dtype, first.device)
        if any((r.fingerprint, r.suite_version, r.limit, r.dtype, r.device) != key for r in rows):
            raise ValueError(
                "put() takes the rows of one evaluation "
                "(one fingerprint, suite version, limit, dtype and device)"
            )
        path = self._path(*key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"rows": [r.to_dict() for r in rows]}, fh, indent=1)
        os.replace(tmp, path)
