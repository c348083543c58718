"""Content fingerprints of checkpoints: every byte of every tensor, hashed once, cached by file identity.

A checkpoint's fingerprint keys its cached scores, its registry row and a study's resumption, so it must
change when any byte of any tensor changes (a fine-tune that differs from another in one weight is another
model). Each tensor's bytes are hashed with XXH3-128 (non-cryptographic, several GB/s); the fingerprint
combines the config (minus volatile keys), every tensor's name, shape, dtype and digest in name order, so it
depends neither on the path nor on how the tensors are sharded into files.

Hashing a multi-GB model on every open would be slow, so the per-tensor digests of each weight file are cached
in `$MERGELAB_HOME/cache/fingerprints/`, keyed by the file's (resolved path, size, mtime, ctime, inode): any
write to the file changes its mtime and ctime (ctime cannot be set back by the writer), a replaced file has a
new inode, so a stale entry is never served; storing a new version of a file drops the old one, so the cache
holds one entry per weight file. A cache that cannot be written is skipped, never an error.
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import xxhash

FINGERPRINT_VERSION = "mergelab-checkpoint-v2"
CONFIG_VOLATILE = ("transformers_version", "_name_or_path", "_commit_hash")
_CHUNK = 64 << 20  # hash in 64 MiB slices so a huge tensor never needs one huge buffer
_MEMO_LIMIT = 4096

_memo: dict[str, dict[str, str]] = {}
_memo_lock = threading.Lock()


def file_key(file: Path) -> str:
    """The identity of one file's current contents: resolved path, size, mtime, ctime, inode."""
    st = os.stat(file)
    return f"{Path(file).resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _cache_root() -> Path | None:
    try:
        from mergelab_home import cache_dir

        return cache_dir("fingerprints")
    except OSError:
        return None


def _digest(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(f"{FINGERPRINT_VERSION}|{text}".encode())


def _cache_file(root: Path, key: str) -> Path:
    """`<hash of the path>-<hash of the whole key>.json`: one file version per entry, findable by path."""
    return root / f"{_digest(key.split('|', 1)[0])}-{_digest(key)}.json"


def _load_cached(key: str) -> dict[str, str] | None:
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    root = _cache_root()
    if root is None:
        return None
    try:
        data = json.loads(_cache_file(root, key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("tensors"), dict):
        return None
    _remember(key, data["tensors"])
    return data["tensors"]


def _remember(key: str, digests: dict[str, str]) -> None:
    with _memo_lock:
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[key] = digests


def _store_cached(key: str, digests: dict[str, str]) -> None:
    _remember(key, digests)
    root = _cache_root()
    if root is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=root)
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key, "tensors": digests}, fh)
        target = _cache_file(root, key)
        os.replace(tmp, target)
        # the cache holds one entry per weight file: older versions of this path can never match again
        for old in root.glob(f"{target.name.split('-', 1)[0]}-*.json"):
            if old != target:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def hash_safetensors_file(file: Path, spans: Iterable[tuple[str, int, int]]) -> dict[str, str]:
    """XXH3-128 of each tensor's bytes in one safetensors file; spans are (name, absolute offset, nbytes).
    The file is memory-mapped and read in offset order, i.e. sequentially."""
    digests: dict[str, str] = {}
    ordered = sorted(spans, key=lambda s: s[1])
    with open(file, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return {name: xxhash.xxh3_128_hexdigest(b"") for name, _, _ in ordered}
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for name, offset, nbytes in ordered:
                    if offset < 0 or offset + nbytes > size:
                        raise OSError(f"tensor {name!r} lies beyond the end of {file}")
                    h = xxhash.xxh3_128()
                    for start in range(offset, offset + nbytes, _CHUNK):
                        h.update(view[start : min(start + _CHUNK, offset + nbytes)])
                    digests[name] = h.hexdigest()
            finally:
                view.release()
    return digests


def hash_tensor(tensor: Any) -> str:
    """XXH3-128 of an in-memory tensor's bytes (pickled checkpoints)."""
    import torch

    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return xxhash.xxh3_128_hexdigest(memoryview(raw))


def tensor_digests(
    files: Mapping[Path, list[tuple[str, int, int]]],
    *,
    read_pickled: Callable[[Path], Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Per-tensor digests of a checkpoint's files, from the cache when the file is unchanged.

    files: weight file -> its (name, offset, nbytes) spans; read_pickled, for .bin checkpoints, returns the
    file's loaded state dict (then offsets are ignored)."""
    out: dict[str, str] = {}
    for file, spans in files.items():
        key = file_key(file)
        digests = _load_cached(key)
        wanted = {name for name, _, _ in spans}
        if digests is None or not wanted <= digests.keys():
            if read_pickled is not None:
                state = read_pickled(file)
                digests = {name: hash_tensor(state[name]) for name in wanted}
            else:
                digests = hash_safetensors_file(file, spans)
            _store_cached(key, digests)
        out.update({name: digests[name] for name in wanted})
    return out


def combine(config: Mapping[str, Any], tensors: Mapping[str, tuple[tuple[int, ...], str]], digests) -> str:
    """The checkpoint fingerprint: config without volatile keys, then name|shape|dtype|digest per tensor."""
    h = xxhash.xxh3_128(FINGERPRINT_VERSION.encode() + b"\0")
    cfg = {k: v for k, v in config.items() if k not in CONFIG_VOLATILE}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        shape, dtype = tensors[name]
        h.update(f"\0{name}|{tuple(shape)}|{dtype}|{digests[name]}".encode())
    return h.hexdigest()


def clear_memo() -> None:
    """Forget the in-process memo (the on-disk cache stays); for tests and benchmarks."""
    with _memo_lock:
        _memo.clear()
