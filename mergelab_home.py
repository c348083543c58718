"""The workspace, defined once: MERGELAB_HOME (default ./workspace) and where each kind of state lives in it.

Every package (store, evaluation, zoo, jobs, ui, and merging's fingerprint cache) asks this module, so the
workspace has one spelling and one path policy: the home is read from the environment on each call (tests
and the app point it elsewhere), made absolute, and anything the app lets a user name must stay inside it.
This module imports nothing from MergeLab, so every layer may import it.

    home_dir()            $MERGELAB_HOME, absolute
    database_path()       <home>/mergelab.duckdb
    zoo_dir()             <home>/zoo
    merges_dir()          <home>/merges
    cache_dir(*parts)     <home>/cache/<parts...> (created)
    inside_home(path)     the resolved path, or PathOutsideHome when it (or a symlink on the way) leaves home
    safe_name(name)       a single safe path component, or ValueError
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV_VAR = "MERGELAB_HOME"
DEFAULT_HOME = "workspace"
DATABASE_NAME = "mergelab.duckdb"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class PathOutsideHome(ValueError):
    """A path chosen in the app resolves outside MERGELAB_HOME (via `..`, an absolute path or a symlink)."""


def home_dir(create: bool = False) -> Path:
    """MERGELAB_HOME (default ./workspace) as an absolute path; created when `create` is true."""
    home = Path(os.environ.get(ENV_VAR) or DEFAULT_HOME).expanduser().resolve()
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def database_path() -> Path:
    return home_dir() / DATABASE_NAME


def zoo_dir() -> Path:
    return home_dir() / "zoo"


def merges_dir() -> Path:
    return home_dir() / "merges"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """A folder under `<home>/cache/`, created on demand."""
    path = home_dir().joinpath("cache", *parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def inside_home(path: str | Path, home: Path | None = None) -> Path:
    """`path` (relative paths are taken relative to the home) resolved with every symlink followed; raises
    PathOutsideHome when the result is not inside the home. Use it on every output path a user types."""
    root = (home or home_dir()).resolve()
    raw = Path(path).expanduser()
    resolved = (raw if raw.is_absolute() else root / raw).resolve()
    if resolved != root and root not in resolved.parents:
        raise PathOutsideHome(
            f"{path} is outside the workspace {root}; the app writes only inside MERGELAB_HOME "
            "(choose a path under it, or use the command line for other places)."
        )
    return resolved


def safe_name(name: str) -> str:
    """A name that is one harmless path component (letters, digits, `._+-`, not starting with a dot):
    recipe and output names typed in the app pass through this before they become folders."""
    name = str(name).strip()
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(
            f"{name!r} is not a usable name: use letters, digits and . _ + - (at most 128, no leading dot, "
            "no '..' and no slashes)."
        )
    return name
