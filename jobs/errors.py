"""Errors of the jobs layer that a user can cause, and the cancellation signal."""


class JobError(Exception):
    """A job request or run that cannot proceed: unknown kind, bad parameters, failed study merges."""


class JobCancelled(Exception):
    """Raised inside a job when the user cancelled it; the runner records the job as cancelled."""
