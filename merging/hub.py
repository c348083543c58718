"""Hugging Face Hub checkpoints without waiting: headers over HTTP, downloads only when asked.

A Hub id is described (architecture, tensor list, parameter count, compatibility) from its config.json and
its safetensors headers, fetched with ranged HTTP reads: a few KB per file, never the weights. Weights are
downloaded only for a merge, by `download_checkpoint`: resumable (`.part` files continue where they
stopped), cancellable between chunks, size- and sha256-checked, into a cache folder the caller chooses
(MergeLab passes `$MERGELAB_HOME/cache/hub`), so nothing lands outside the workspace.

Only weights in safetensors form, configs and tokenizer files are fetched; pickled `.bin` weights never
are, so an opt-in to pickles applies to local directories only. The client is plain urllib against the
Hub's public HTTP API (`/api/models/{id}/revision/{rev}` and `/{id}/resolve/{rev}/{file}`); the endpoint
comes from MERGELAB_HUB_ENDPOINT or HF_ENDPOINT, which is how tests point it at a local server.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merging.errors import CheckpointError, MergeCancelled

HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 10.0
CHUNK = 4 << 20
_MAX_HEADER = 100_000_000
_COMPLETE = ".complete"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

ProgressFn = Callable[[int, int, str], None]


def looks_like_hub_id(ref: str) -> bool:
    """`org/name` with no path syntax: what the Hub accepts as a repository id."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref


def endpoint() -> str:
    return (
        os.environ.get("MERGELAB_HUB_ENDPOINT") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    ).rstrip("/")


def offline() -> bool:
    """HF_HUB_OFFLINE set: no request is even attempted, so the answer comes at once."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def default_cache_dir() -> Path:
    """`$MERGELAB_HOME/cache/hub` (MERGELAB_HOME defaults to ./workspace, as everywhere)."""
    from mergelab_home import cache_dir

    return cache_dir("hub", create=False)


# --- HTTP -----------------------------------------------------------------------------------------------
def _open(repo_id: str, url: str, *, byte_range: tuple[int, int] | None = None, start: int | None = None):
    if offline():
        raise CheckpointError(
            f"checkpoint {repo_id!r} not found locally and the Hub cannot be reached (offline: "
            "HF_HUB_OFFLINE is set); download it first or give a local directory"
        )
    headers = {"User-Agent": "mergelab"}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    elif start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise CheckpointError(
                f"checkpoint {repo_id!r} is gated or private on the Hub: accept its licence and set HF_TOKEN"
            ) from None
        if exc.code == 404:
            raise CheckpointError(
                f"checkpoint {repo_id!r} not found: no such local directory and no such Hub repository "
                "or file"
            ) from None
        raise CheckpointError(f"checkpoint {repo_id!r}: the Hub answered HTTP {exc.code} for {url}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(
            f"checkpoint {repo_id!r} not found locally and the Hub cannot be reached ({reason}); "
            "download it first or give a local directory"
        ) from None


def _read(repo_id: str, url: str, byte_range: tuple[int, int] | None = None) -> bytes:
    with _open(repo_id, url, byte_range=byte_range) as resp:
        data = resp.read()
    if byte_range is not None and len(data) > byte_range[1] - byte_range[0] + 1:
        data = data[byte_range[0] : byte_range[1] + 1]  # a server that ignored Range sent the whole file
    return data


def _file_url(repo_id: str, revision: str, filename: str) -> str:
    quoted = urllib.parse.quote(filename)
    return f"{endpoint()}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class RepoListing:
    """What the Hub says a repository holds at one revision (the commit sha pins the download)."""

    repo_id: str
    sha: str
    files: tuple[RemoteFile, ...]

    def wanted(self) -> list[RemoteFile]:
        return [f for f in self.files if any(fnmatch.fnmatch(f.name, p) for p in HUB_PATTERNS)]


def list_repo(repo_id: str, revision: str = "main") -> RepoListing:
    url = f"{endpoint()}/api/models/{repo_id}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true"
    try:
        info = json.loads(_read(repo_id, url))
        sha = str(info.get("sha") or revision)
        files = tuple(
            RemoteFile(
                s["rfilename"],
                (s.get("lfs") or {}).get("size", s.get("size")),
                (s.get("lfs") or {}).get("sha256"),
            )
            for s in info.get("siblings", [])
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {repo_id!r}: unreadable answer from the Hub ({exc})") from None
    return RepoListing(repo_id, sha, files)


# --- headers without weights ------------------------------------------------------------------------------
def fetch_header(repo_id: str, revision: str, filename: str) -> tuple[dict[str, Any], int]:
    """(the safetensors JSON header, the byte offset where tensor data starts) via two ranged reads."""
    url = _file_url(repo_id, revision, filename)
    head = _read(repo_id, url, (0, 7))
    if len(head) < 8:
        raise CheckpointError(f"checkpoint {repo_id!r}: {filename} is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER:
        raise CheckpointError(f"checkpoint {repo_id!r}: {filename} claims a {n}-byte header")
    raw = _read(repo_id, url, (8, 8 + n - 1))
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {repo_id!r}: {filename} has an unreadable header ({exc})"
        ) from None
    return header, 8 + n


def fetch_remote(repo_id: str, revision: str = "main") -> tuple[RepoListing, dict[str, Any], dict[str, Any]]:
    """(listing, config.json, {safetensors file name: (header, data start)}): everything but the weights."""
    listing = list_repo(repo_id, revision)
    names = {f.name for f in listing.files}
    if "config.json" not in names:
        raise CheckpointError(f"checkpoint {repo_id!r} has no config.json on the Hub")
    try:
        config = json.loads(_read(repo_id, _file_url(repo_id, listing.sha, "config.json")))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {repo_id!r}: unreadable config.json ({exc})") from None
    shards = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    if not shards:
        raise CheckpointError(
            f"checkpoint {repo_id!r} has no safetensors weights on the Hub (pickled .bin weights are never "
            "downloaded)"
        )
    headers = {name: fetch_header(repo_id, listing.sha, name) for name in shards}
    return listing, config, headers


# --- downloads ------------------------------------------------------------------------------------------
def snapshot_dir(cache_dir: Path, repo_id: str, sha: str) -> Path:
    return Path(cache_dir) / repo_id.replace("/", "--") / sha


def cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The newest fully downloaded snapshot of `repo_id` in the cache, or None."""
    root = Path(cache_dir) / repo_id.replace("/", "--")
    done = [p.parent for p in root.glob(f"*/{_COMPLETE}")] if root.is_dir() else []
    return max(done, key=lambda p: (p / _COMPLETE).stat().st_mtime) if done else None


def download_checkpoint(
    repo_id: str,
    *,
    cache_dir: Path | None = None,
    revision: str = "main",
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Path:
    """Download safetensors, configs and tokenizer files of `repo_id` into the cache; returns the folder.

    Interrupted downloads resume from their `.part` file; a cancel raises MergeCancelled between chunks and
    keeps the `.part` for the next attempt. The folder is marked complete only once every file has its
    listed size (and sha256, where the Hub gives one).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    listing = list_repo(repo_id, revision)
    target = snapshot_dir(cache_dir, repo_id, listing.sha)
    if (target / _COMPLETE).exists():
        return target
    files = listing.wanted()
    if not any(f.name.endswith(".safetensors") for f in files):
        raise CheckpointError(f"checkpoint {repo_id!r} has no safetensors weights on the Hub")
    total = sum(f.size or 0 for f in files)
    done = 0
    for f in files:
        dest = target / f.name
        if dest.exists() and (f.size is None or dest.stat().st_size == f.size):
            done += dest.stat().st_size
            continue
        done = _download_file(repo_id, listing.sha, f, dest, done, total, progress, should_cancel)
    (target / _COMPLETE).write_text(json.dumps({"repo": repo_id, "sha": listing.sha}))
    return target


def _download_file(repo_id, sha, f: RemoteFile, dest: Path, done, total, progress, should_cancel) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    with _open(repo_id, _file_url(repo_id, sha, f.name), start=have) as resp:
        if have and getattr(resp, "status", 200) != 206:  # server ignored Range: start over
            have = 0
        with open(part, "ab" if have else "wb") as out:
            done += have
            while True:
                if should_cancel is not None and should_cancel():
                    raise MergeCancelled(f"download of {repo_id} cancelled")
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total, f.name)
    size = part.stat().st_size
    if f.size is not None and size != f.size:
        raise CheckpointError(
            f"checkpoint {repo_id!r}: {f.name} arrived with {size} bytes, expected {f.size}"
        )
    if f.sha256 is not None and _sha256(part) != f.sha256:
        part.unlink()
        raise CheckpointError(
            f"checkpoint {repo_id!r}: {f.name} failed its sha256 check; it will be fetched again"
        )
    os.replace(part, dest)
    return done


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def resolve_ref(ref: str | Path, cache_dir: Path | None = None, *, download: bool = True) -> Path | None:
    """A local directory for `ref`: the directory itself, a cached Hub snapshot, or a fresh download.

    With download=False a Hub id that is not cached gives None (the caller reads its headers remotely).
    Every failure is a CheckpointError naming the reference, never a traceback.
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {text!r} is a file; give the directory that holds config.json")
        return path
    if not looks_like_hub_id(text):
        raise CheckpointError(
            f"checkpoint {text!r} not found: no such directory (and not a Hub id like org/name)"
        )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cached_snapshot(text, cache_dir)
    if cached is not None:
        return cached
    if not download:
        return None
    return download_checkpoint(text, cache_dir=cache_dir)


def clear_partial(repo_id: str, cache_dir: Path) -> None:
    """Forget an unfinished download of `repo_id` (its `.part` files and unfinished snapshots)."""
    root = Path(cache_dir) / repo_id.replace("/", "--")
    for snap in root.glob("*") if root.is_dir() else []:
        if not (snap / _COMPLETE).exists():
            shutil.rmtree(snap, ignore_errors=True)
