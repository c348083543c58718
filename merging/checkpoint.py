"""Checkpoints: a model directory's config, tensor headers and lazy tensor reads.

Opening a checkpoint reads only the safetensors headers (parsed here, byte by byte, so a truncated or corrupt
file is caught before a merge starts) and config.json; the fingerprint hashes every tensor byte once per file
version (merging/fingerprint.py). Tensors are read one at a time on demand through `safetensors.safe_open`,
which memory-maps the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merging.errors import CheckpointError
from merging.fingerprint import combine, tensor_digests
from merging.hub import resolve_ref

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
BIN_SINGLE_NAME = "pytorch_model.bin"

# safetensors dtype code -> (torch dtype, bytes per element)
ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U64": (torch.uint64, 8),
    "U32": (torch.uint32, 4),
    "U16": (torch.uint16, 2),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
TORCH_TO_ST = {dt: code for code, (dt, _) in ST_DTYPES.items()}
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16": the spelling used in configs, recipes and TensorInfo."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, as its header describes it. `offset` is the absolute byte offset of its data
    in `file` (-1 for pickled weights, whose layout is not ours to read)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    nbytes: int
    offset: int = -1

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Tensor infos of one safetensors file, checking every offset against the file's real size."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"corrupt safetensors file {file}: shorter than its 8-byte header length"
                )
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"corrupt or truncated safetensors file {file}: header claims {n} bytes, file has {size}"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"corrupt safetensors file {file}: unreadable header ({exc})") from None
    return tensor_infos(header, 8 + n, size, file)


def tensor_infos(
    header: dict[str, Any], data_start: int, size: int | None, file: Path
) -> dict[str, TensorInfo]:
    """TensorInfos from a parsed safetensors header, every offset checked against the file's size (when
    known: a remote file's size comes from the Hub's listing)."""
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = (
                entry["dtype"],
                [int(d) for d in entry["shape"]],
                entry["data_offsets"],
            )
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"corrupt safetensors file {file}: bad header entry for {name!r}") from None
        if code not in ST_DTYPES:
            raise CheckpointError(f"safetensors file {file}: tensor {name!r} has unsupported dtype {code}")
        dtype, width = ST_DTYPES[code]
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * width or begin < 0:
            raise CheckpointError(
                f"corrupt safetensors file {file}: tensor {name!r} spans {end - begin} bytes, "
                f"shape {shape} {code} needs {numel * width}"
            )
        if size is not None and data_start + end > size:
            raise CheckpointError(
                f"truncated safetensors file {file}: tensor {name!r} ends at byte {data_start + end}, "
                f"file has {size}"
            )
        infos[name] = TensorInfo(
            name, tuple(shape), dtype_name(dtype), file, numel * width, data_start + begin
        )
    return infos


class Checkpoint:
    """An opened model directory. Cheap to open; tensors are read lazily with `read(name)`."""

    remote = False

    def __init__(self, ref: str, path: Path, config: dict[str, Any], tensors: dict[str, TensorInfo], pickled):
        self.ref = ref
        self.path = path
        self.config = config
        self.tensors = tensors
        self._pickled: dict[Path, dict[str, torch.Tensor]] | None = pickled
        self._handles: dict[Path, Any] = {}
        self._fingerprint: str | None = None

    # --- metadata -------------------------------------------------------------------------------
    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def tied_embeddings(self) -> bool:
        """True when the output head reuses the input embedding: no `lm_head` tensor is stored."""
        has_embed = any("embed_tokens" in n for n in self.tensors)
        has_head = any("lm_head" in n for n in self.tensors)
        return has_embed and not has_head

    @property
    def vocab_size(self) -> int | None:
        embed = next((t for n, t in self.tensors.items() if "embed_tokens" in n and len(t.shape) == 2), None)
        if embed is not None:
            return embed.shape[0]
        cfg = self.config.get("text_config") or self.config
        return cfg.get("vocab_size")

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})

    @property
    def fingerprint(self) -> str:
        """Content hash, stable across processes, paths and sharding: config, tensor names, shapes, dtypes
        and an XXH3-128 digest of every byte of every tensor (merging/fingerprint.py). Hashed once per
        weight file and cached under $MERGELAB_HOME/cache/fingerprints by the file's identity."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        spans: dict[Path, list[tuple[str, int, int]]] = {}
        for t in self.tensors.values():
            spans.setdefault(t.file, []).append((t.name, t.offset, t.nbytes))
        read_pickled = None if self._pickled is None else self._pickled.__getitem__
        try:
            digests = tensor_digests(spans, read_pickled=read_pickled)
        except OSError as exc:
            raise CheckpointError(f"cannot fingerprint {self.ref!r}: {exc}") from None
        shapes = {name: (t.shape, t.dtype) for name, t in self.tensors.items()}
        return combine(self.config, shapes, digests)

    # --- tensors --------------------------------------------------------------------------------
    def read(self, name: str) -> torch.Tensor:
        """The stored tensor, in its stored dtype, on the CPU (memory-mapped for safetensors)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"checkpoint {self.ref!r} has no tensor {name!r}")
        if self._pickled is not None:
            return self._pickled[info.file][name]
        handle = self._handles.get(info.file)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(info.file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"cannot open {info.file}: {exc}") from None
            self._handles[info.file] = handle
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {info.file}: {exc}") from None

    def close(self) -> None:
        self._handles.clear()
        if self._pickled is not None:
            self._pickled.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.ref!r}, {self.architecture}, {len(self.tensors)} tensors)"


class RemoteCheckpoint(Checkpoint):
    """A Hub checkpoint known from its config and safetensors headers only: enough to describe it, count
    its parameters and check compatibility, without a byte of its weights. Reading a tensor needs a download
    (`merging.hub.download_checkpoint`, which a merge job runs)."""

    remote = True

    def __init__(self, ref: str, sha: str, config: dict[str, Any], tensors: dict[str, TensorInfo]):
        super().__init__(ref, Path(ref), config, tensors, None)
        self.sha = sha

    def _compute_fingerprint(self) -> str:
        """Identity of a Hub revision: the repository, its commit and its headers (weights unseen)."""
        h = hashlib.sha256(b"mergelab-hub-checkpoint-v1\0")
        h.update(f"{self.ref}@{self.sha}".encode())
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(f"\0{name}|{t.shape}|{t.dtype}|{t.nbytes}|{t.file.name}|{t.offset}".encode())
        return h.hexdigest()[:32]

    def read(self, name: str) -> torch.Tensor:
        raise CheckpointError(
            f"checkpoint {self.ref!r} is known from its Hub headers only; its weights are downloaded when a "
            "merge needs them"
        )

    def __repr__(self) -> str:
        return (
            f"RemoteCheckpoint({self.ref!r}@{self.sha[:8]}, {self.architecture}, {len(self.tensors)} tensors)"
        )


def _open_remote(ref: str) -> RemoteCheckpoint:
    from merging.hub import fetch_remote

    listing, config, headers = fetch_remote(ref)
    sizes = {f.name: f.size for f in listing.files}
    tensors: dict[str, TensorInfo] = {}
    for fname, (header, data_start) in headers.items():
        for name, info in tensor_infos(header, data_start, sizes.get(fname), Path(fname)).items():
            if name in tensors:
                raise CheckpointError(f"checkpoint {ref!r}: tensor {name!r} is stored twice ({fname})")
            tensors[name] = info
    if not tensors:
        raise CheckpointError(f"checkpoint {ref!r} holds no tensors")
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {ref!r}: config.json is not a JSON object")
    return RemoteCheckpoint(ref, listing.sha, config, tensors)


def open_checkpoint(
    ref: str | Path, *, allow_bin: bool = False, cache_dir: Path | None = None, download: bool = True
) -> Checkpoint:
    """Open a local model directory or a Hub id. Raises CheckpointError with a one-line reason.

    A Hub id is served from the workspace's Hub cache when it was downloaded before; otherwise
    download=True fetches it (what a merge needs) and download=False reads only its config and headers over
    HTTP and returns a RemoteCheckpoint (what pages need: seconds, not gigabytes).
    """
    path = resolve_ref(ref, cache_dir, download=download)
    if path is None:
        return _open_remote(str(ref))
    config = _read_config(path, str(ref))
    files = _safetensors_files(path, str(ref))
    if files:
        tensors: dict[str, TensorInfo] = {}
        for f in files:
            for name, info in read_safetensors_header(f).items():
                if name in tensors:
                    raise CheckpointError(
                        f"checkpoint {str(ref)!r}: tensor {name!r} is stored twice ({f.name})"
                    )
                tensors[name] = info
        if not tensors:
            raise CheckpointError(f"checkpoint {str(ref)!r} holds no tensors")
        return Checkpoint(str(ref), path, config, tensors, None)
    bins = _bin_files(path, str(ref))
    if not bins:
        raise CheckpointError(
            f"checkpoint {str(ref)!r} has no weights: no *.safetensors or pytorch_model*.bin"
        )
    if not allow_bin:
        raise CheckpointError(
            f"checkpoint {str(ref)!r} has only pickled .bin weights, which can run code when loaded; "
            "convert it to safetensors or opt in with --allow-bin (loads with weights_only=True)"
        )
    return _open_bin(str(ref), path, config, bins)


def _read_config(path: Path, ref: str) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {ref!r} has no config.json in {path}")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ref!r}: unreadable config.json ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {ref!r}: config.json is not a JSON object")
    return config


def _indexed_files(path: Path, index_name: str, ref: str) -> list[Path]:
    try:
        index = json.loads((path / index_name).read_text())
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {ref!r}: unreadable {index_name} ({exc})") from None
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {ref!r}: shard {missing[0]} listed in {index_name} is missing")
    return [path / s for s in shards]


def _safetensors_files(path: Path, ref: str) -> list[Path]:
    """Index first, then the single-file name, then any *.safetensors (sorted)."""
    if (path / INDEX_NAME).is_file():
        return _indexed_files(path, INDEX_NAME, ref)
    if (path / SINGLE_NAME).is_file():
        return [path / SINGLE_NAME]
    return sorted(path.glob("*.safetensors"))


def _bin_files(path: Path, ref: str) -> list[Path]:
    if (path / BIN_INDEX_NAME).is_file():
        return _indexed_files(path, BIN_INDEX_NAME, ref)
    if (path / BIN_SINGLE_NAME).is_file():
        return [path / BIN_SINGLE_NAME]
    return sorted(path.glob("pytorch_model*.bin"))


def _open_bin(ref: str, path: Path, config: dict[str, Any], files: list[Path]) -> Checkpoint:
    """Pickled weights, loaded with weights_only=True (no code execution) and memory-mapped."""
    pickled: dict[Path, dict[str, torch.Tensor]] = {}
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            msg = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"checkpoint {ref!r}: {f.name} cannot be loaded safely ({msg})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"checkpoint {ref!r}: {f.name} is not a flat state dict of tensors")
        pickled[f] = sd
        for name, t in sd.items():
            if name in tensors:
                raise CheckpointError(f"checkpoint {ref!r}: tensor {name!r} is stored twice ({f.name})")
            tensors[name] = TensorInfo(
                name, tuple(t.shape), dtype_name(t.dtype), f, t.numel() * t.element_size()
            )
    return Checkpoint(ref, path, config, tensors, pickled)
