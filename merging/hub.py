"""Turning a checkpoint reference (a local directory or a Hugging Face Hub id) into a local directory.

Only weights in safetensors form, configs and tokenizer files are fetched; pickled `.bin` weights are never
downloaded, so an opt-in to pickles (`allow_bin`) applies to local directories only.
"""

from __future__ import annotations

import re
from pathlib import Path

from merging.errors import CheckpointError

HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(ref: str) -> bool:
    """`org/name` with no path syntax: what the Hub accepts as a repository id."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref


def resolve_ref(ref: str | Path, cache_dir: Path | None = None) -> Path:
    """A local directory for `ref`: the directory itself, or a Hub snapshot (cached or downloaded).

    Every failure is a CheckpointError naming the reference, never a traceback: missing path, offline
    without a cached copy, unknown or gated repository, network errors.
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
    return _download(text, cache_dir)


def _download(repo_id: str, cache_dir: Path | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a pinned requirement
        raise CheckpointError(f"checkpoint {repo_id!r}: huggingface_hub is not installed ({exc})") from None
    try:
        out = snapshot_download(
            repo_id, allow_patterns=HUB_PATTERNS, cache_dir=str(cache_dir) if cache_dir else None
        )
    except GatedRepoError:
        raise CheckpointError(
            f"checkpoint {repo_id!r} is gated on the Hub: accept its licence and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"checkpoint {repo_id!r} not found: no such local directory and no such Hub repository"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"checkpoint {repo_id!r}: revision not found on the Hub") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"checkpoint {repo_id!r} not found locally and the Hub cannot be reached (offline?); "
            "download it first or give a local directory"
        ) from None
    except Exception as exc:  # network, HTTP and validation errors all become one clear line
        msg = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint {repo_id!r} could not be downloaded: {msg}") from None
    return Path(out)
