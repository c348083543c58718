"""The persisted job queue: job rows, their state machine, progress, append-only log and cancel flag.

States: queued -> running -> done | failed | cancelled; a running job whose process died becomes
interrupted. failed, cancelled and interrupted jobs can be retried (back to queued, attempt kept).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from store.db import StoreCore, utcnow
from store.errors import StoreError

JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
RETRYABLE = ("failed", "cancelled", "interrupted")
END_STATES = ("done", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    params: dict[str, Any]
    status: str
    progress: float
    message: str
    log: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pid: int | None
    owner: str | None
    temp_paths: list[str]
    result: Any
    attempt: int
    cancel_requested: bool

    @property
    def finished(self) -> bool:
        return self.status in END_STATES


def _record(row: Mapping[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        params=json.loads(row["params_json"]),
        status=row["status"],
        progress=float(row["progress"]),
        message=row["message"],
        log=row["log"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        pid=row["pid"],
        owner=row["owner"],
        temp_paths=json.loads(row["temp_paths_json"]),
        result=json.loads(row["result_json"]) if row["result_json"] is not None else None,
        attempt=int(row["attempt"]),
        cancel_requested=bool(row["cancel_requested"]),
    )


class JobsMixin(StoreCore):
    def add_job(
        self, kind: str, params: Mapping[str, Any], *, job_id: str | None = None, group_id: str | None = None
    ) -> str:
        """Queue a job; params must be JSON-serialisable. Returns the job id. `group_id` names the launch
        that created it (the first job's id; a job launched alone is its own group)."""
        job_id = job_id or uuid.uuid4().hex[:12]
        try:
            params_json = json.dumps(dict(params), sort_keys=True)
        except TypeError as exc:
            raise StoreError(f"Job parameters must be JSON values (strings, numbers, lists): {exc}") from exc
        self._write(
            "INSERT INTO jobs (id, kind, params_json, status, created_at, group_id) "
            "VALUES (?, ?, ?, 'queued', ?, ?)",
            [job_id, kind, params_json, utcnow(), group_id or job_id],
        )
        return job_id

    def get_job(self, job_id: str) -> JobRecord:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", [job_id])
        if not rows:
            raise StoreError(f"No job with id {job_id!r}.")
        return _record(rows[0])

    def jobs_with_status(self, *statuses: str) -> list[JobRecord]:
        rows = self._rows("SELECT * FROM jobs WHERE list_contains(?, status) ORDER BY seq", [list(statuses)])
        return [_record(r) for r in rows]

    def jobs_df(self, status: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """Newest first, without the log (which can be long); get_job returns it."""
        where = "WHERE status = ?" if status else ""
        params: list[Any] = [status] if status else []
        tail = f"LIMIT {int(limit)}" if limit else ""
        return self._df(
            "SELECT id, kind, status, progress, message, error, created_at, started_at, finished_at, "
            f"attempt, params_json FROM jobs {where} ORDER BY seq DESC {tail}",
            params,
        )

    # --- what the pages read: small, bounded queries ---------------------------------------------------
    def job_counts(self) -> dict[str, int]:
        """Models, live merges, and jobs per status, in one query (the sidebar's counters)."""
        with self.cursor() as cur:
            models, merges = cur.execute(
                "SELECT (SELECT count(*) FROM models), "
                "(SELECT count(*) FROM merges WHERE superseded_at IS NULL)"
            ).fetchone()
            by_status = dict(cur.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        counts = {"models": int(models), "merges": int(merges)}
        counts.update({s: int(by_status.get(s, 0)) for s in JOB_STATES})
        counts["active"] = counts["queued"] + counts["running"]
        return counts

    def job_groups_page(
        self,
        *,
        offset: int = 0,
        limit: int = 20,
        statuses: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> tuple[int, pd.DataFrame]:
        """One page of launches, newest first: (number of launches in all, their jobs without logs).

        A launch is a group_id; it matches when any of its jobs has one of `statuses` and `kinds`. The jobs
        come ordered by launch (newest first), then by creation inside the launch; `duration_s` is finished
        minus started (or now minus started while running)."""
        clauses, params = [], []
        if statuses:
            clauses.append("list_contains(?, status)")
            params.append(list(statuses))
        if kinds:
            clauses.append("list_contains(?, kind)")
            params.append(list(kinds))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        groups = f"SELECT coalesce(group_id, id) AS g, max(seq) AS newest FROM jobs {where} GROUP BY g"
        with self.cursor() as cur:
            total = int(cur.execute(f"SELECT count(*) FROM ({groups})", params).fetchone()[0])
            df = cur.execute(
                f"""
                WITH page AS ({groups} ORDER BY newest DESC LIMIT ? OFFSET ?)
                SELECT j.id, coalesce(j.group_id, j.id) AS group_id, j.kind, j.status, j.progress, j.message,
                    j.error, j.created_at, j.started_at, j.finished_at, j.attempt, j.params_json,
                    j.result_json, date_diff('millisecond', j.started_at,
                        coalesce(j.finished_at, CAST(? AS TIMESTAMP))) / 1000.0 AS duration_s
                FROM jobs j JOIN page p ON p.g = coalesce(j.group_id, j.id)
                ORDER BY p.newest DESC, j.seq
                """,
                [*params, int(limit), int(offset), utcnow()],
            ).df()
        return total, df

    def job_log(self, job_id: str, tail_chars: int | None = None) -> str:
        """A job's log (its last `tail_chars` characters when given); '' for an unknown job."""
        if tail_chars:
            sql = "SELECT right(log, ?) FROM jobs WHERE id = ?"
            return self._scalar(sql, [int(tail_chars), job_id]) or ""
        return self._scalar("SELECT log FROM jobs WHERE id = ?", [job_id]) or ""

    def claim_next_job(self, owner: str, pid: int, kinds: Sequence[str] | None = None) -> JobRecord | None:
        """Atomically take the oldest queued job (of the given kinds) and mark it running for this owner."""
        with self.transaction() as cur:
            if kinds is None:
                row = cur.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
                ).fetchone()
            else:
                row = cur.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' AND list_contains(?, kind) "
                    "ORDER BY seq LIMIT 1",
                    [list(kinds)],
                ).fetchone()
            if row is None:
                return None
            cur.execute(
                """
                UPDATE jobs SET status = 'running', started_at = ?, finished_at = NULL, pid = ?, owner = ?,
                    attempt = attempt + 1, progress = 0, message = 'started', error = NULL,
                    cancel_requested = false
                WHERE id = ?
                """,
                [utcnow(), pid, owner, row[0]],
            )
        return self.get_job(row[0])

    def update_job_progress(self, job_id: str, progress: float, message: str | None = None) -> None:
        progress = min(1.0, max(0.0, float(progress)))
        if message is None:
            self._write("UPDATE jobs SET progress = ? WHERE id = ?", [progress, job_id])
        else:
            self._write("UPDATE jobs SET progress = ?, message = ? WHERE id = ?", [progress, message, job_id])

    def append_job_log(self, job_id: str, text: str) -> None:
        """Append to the job's log (a newline is added when missing)."""
        if not text.endswith("\n"):
            text += "\n"
        self._write("UPDATE jobs SET log = log || ? WHERE id = ?", [text, job_id])

    def set_job_temp_paths(self, job_id: str, paths: Sequence[str]) -> None:
        """Record outputs being written, so a restart can remove them if this process dies."""
        self._write("UPDATE jobs SET temp_paths_json = ? WHERE id = ?", [json.dumps(list(paths)), job_id])

    def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        result: Any = None,
        message: str | None = None,
    ) -> None:
        if status not in END_STATES:
            raise StoreError(f"Unknown job end state {status!r}; use one of {', '.join(END_STATES)}.")
        self._write(
            """
            UPDATE jobs SET status = ?, error = ?, result_json = ?, finished_at = ?,
                progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END,
                message = coalesce(?, message), temp_paths_json = '[]'
            WHERE id = ?
            """,
            [
                status,
                error,
                json.dumps(result, default=str) if result is not None else None,
                utcnow(),
                status,
                message or status,
                job_id,
            ],
        )

    def request_job_cancel(self, job_id: str) -> str:
        """Cancel a queued job at once, or flag a running one; returns the job's status afterwards."""
        with self.transaction() as cur:
            row = cur.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row is None:
                raise StoreError(f"No job with id {job_id!r}.")
            status = row[0]
            if status == "queued":
                cur.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?, message = 'cancelled' "
                    "WHERE id = ?",
                    [utcnow(), job_id],
                )
                return "cancelled"
            if status == "running":
                cur.execute(
                    "UPDATE jobs SET cancel_requested = true, message = 'cancelling' WHERE id = ?", [job_id]
                )
            return status

    def is_cancel_requested(self, job_id: str) -> bool:
        return bool(self._scalar("SELECT cancel_requested FROM jobs WHERE id = ?", [job_id]))

    def retry_job(self, job_id: str) -> None:
        """Put a failed, cancelled or interrupted job back in the queue."""
        job = self.get_job(job_id)
        if job.status not in RETRYABLE:
            raise StoreError(
                f"Job {job_id} is {job.status}; only {', '.join(RETRYABLE)} jobs can be retried."
            )
        self._write(
            """
            UPDATE jobs SET status = 'queued', progress = 0, message = 'queued for retry', error = NULL,
                result_json = NULL, started_at = NULL, finished_at = NULL, cancel_requested = false,
                seq = nextval('jobs_seq'), log = log || ?
            WHERE id = ?
            """,
            [f"--- retry after {job.status} (attempt {job.attempt + 1}) ---\n", job_id],
        )

    def mark_job_interrupted(self, job_id: str, reason: str) -> None:
        self._write(
            """
            UPDATE jobs SET status = 'interrupted', error = ?, finished_at = ?, message = 'interrupted',
                temp_paths_json = '[]', log = log || ?
            WHERE id = ?
            """,
            [reason, utcnow(), f"--- interrupted: {reason} ---\n", job_id],
        )
