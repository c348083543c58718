"""Shared app state: the workspace, the one Store and the one JobRunner per process, and the page guard.

Streamlit reruns every page script on each interaction; the store (a DuckDB connection) and the job
runner (worker threads) must survive those reruns and exist once per process, which is what
`st.cache_resource` gives. Both are keyed by the workspace path so tests that point MERGELAB_HOME at a
fresh folder get a fresh store and runner.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

import jobs
import mergelab_home
import store
from evaluation import EvaluationError
from jobs.errors import JobError
from merging.errors import MergeError


def workspace_home() -> Path:
    """MERGELAB_HOME (default ./workspace) as an absolute path, created if missing."""
    return mergelab_home.home_dir(create=True)


@st.cache_resource(show_spinner=False)
def _store_for(home: str) -> store.Store:
    return store.Store(Path(home) / mergelab_home.DATABASE_NAME)


@st.cache_resource(show_spinner=False)
def _runner_for(home: str) -> jobs.JobRunner:
    return jobs.JobRunner(_store_for(home))


def get_store() -> store.Store:
    """The process-wide Store of the current workspace (the app is the only DuckDB writer)."""
    return _store_for(str(workspace_home()))


def get_runner() -> jobs.JobRunner:
    """The process-wide JobRunner; its worker threads never touch `st.*`."""
    return _runner_for(str(workspace_home()))


# Exceptions a user can cause (bad recipe, unreadable checkpoint, unknown id, bad YAML, missing file):
# their message is the whole story, so they are shown as a plain st.error.
USER_ERRORS: tuple[type[BaseException], ...] = (
    MergeError,
    JobError,
    EvaluationError,
    store.StoreError,
    ValueError,
    KeyError,
    FileNotFoundError,
    PermissionError,
)


def show_error(exc: BaseException, context: str | None = None) -> None:
    """Render an exception as an error box: the message for user errors, plus details for bugs."""
    prefix = f"{context}: " if context else ""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, USER_ERRORS):
        st.error(prefix + message)
        return
    st.error(f"{prefix}Unexpected {type(exc).__name__}: {message}")
    with st.expander("Details for a bug report"):
        st.code("".join(traceback.format_exception(exc)), language="text")


@contextmanager
def guard(context: str | None = None) -> Iterator[None]:
    """Run a page body (or part of one) so an error becomes an st.error box, never a traceback page.

    Streamlit's own control flow (st.rerun, st.stop, st.switch_page) raises BaseException subclasses,
    which pass through untouched.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the UI's last line of defence
        show_error(exc, context)


def sync_zoo() -> None:
    """Register the demo zoo's ready families once per manifest write (keyed by its mtime): a build
    rewrites zoo.json as each family is ready, so the first family appears while the next one builds."""
    import zoo
    from ui import catalog

    root = workspace_home() / "zoo"
    manifest_file = root / "zoo.json"
    if not manifest_file.exists():
        return
    stamp = (str(root), manifest_file.stat().st_mtime_ns)
    if st.session_state.get("_zoo_synced") == stamp:
        return
    with guard("Registering the demo zoo"):
        manifest = zoo.ready_manifest(root)
        if manifest is not None:
            catalog.register_zoo(get_store(), manifest)
            st.session_state["_zoo_synced"] = stamp
