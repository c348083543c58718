"""Sinks: where merged tensors go. The engine calls begin(base, recipe, plan), write(name, tensor) per
tensor in plan order, then commit(result) or abort().

`DirectorySink` writes a loadable model directory, streaming each tensor straight into its safetensors shard
(the layout is fixed from the plan up front, so no shard is buffered in memory), inside a temporary sibling
directory that is renamed into place only on commit. The temporary directory is named after the output and
the writing process (`.NAME.mergelab-tmp-PID-RAND`), so a later merge to the same output can tell a dead
writer's leftovers from a live one's and remove them; abort removes only what this sink created, never a
folder another merge may be using. `ModelSink` writes into a resident transformers model, so evaluation can
score a merge without touching disk; a refused merge leaves it marked `stale`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import torch

from merging.checkpoint import INDEX_NAME, SINGLE_NAME, TORCH_TO_ST, Checkpoint, dtype_name
from merging.errors import CompatibilityError, OutputError, OutputExistsError
from merging.plan import MergePlan, PlannedTensor
from merging.recipe import Recipe

if TYPE_CHECKING:
    from merging.engine import MergeResult

# Files copied from the base so the output tokenizes and generates like it.
COPIED_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
)


class Sink(Protocol):
    """A sink may also offer `write_rows(name, start, rows)` (both sinks here do): the engine then hands it
    a tensor merged in row blocks block by block, in order; otherwise it assembles the tensor first."""

    def begin(self, base: Checkpoint, recipe: Recipe, plan: MergePlan) -> None: ...
    def write(self, name: str, tensor: torch.Tensor) -> None: ...
    def commit(self, result: MergeResult) -> Path | None: ...
    def abort(self) -> None: ...


TMP_MARK = ".mergelab-tmp-"


def temp_name(out_dir: Path, pid: int | None = None) -> str:
    """The temporary sibling's name for one merge into `out_dir`: output name, writer's PID, random tag."""
    return f".{out_dir.name}{TMP_MARK}{os.getpid() if pid is None else pid}-{secrets.token_hex(6)}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(out_dir: Path) -> list[Path]:
    """Remove temporary siblings of `out_dir` left by merges whose process is gone (kill -9, power loss).
    A live process's temporary folder is left alone, whoever it belongs to. Returns what was removed."""
    removed: list[Path] = []
    prefix = f".{out_dir.name}{TMP_MARK}"
    try:
        siblings = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        pid_text = p.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputExistsError(
            f"output directory {str(out_dir)!r} already exists and is not empty; choose another"
        )


class _ShardWriter:
    """One safetensors file written front to back: header (from the plan) first, then tensor bytes."""

    def __init__(self, path: Path, tensors: list[PlannedTensor]):
        self.path = path
        self.tensors = tensors
        self.next = 0
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in tensors:
            header[t.name] = {
                "dtype": TORCH_TO_ST[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.fh: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed in finish()/close()
        self.fh.write(struct.pack("<Q", len(raw)) + raw)

    def write_bytes(self, t: torch.Tensor) -> int:
        """Append a tensor's (or a row block's) bytes; the caller advances `next` when a tensor is done."""
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self.fh.write(memoryview(data))
        return data.nbytes

    @property
    def done(self) -> bool:
        return self.next == len(self.tensors)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class _WriteBehind:
    """Runs a sink's file writes on one thread, in order, one write behind the engine: the next tensor is
    merged while the last one is written (the write is the kernel copying into the page cache, which holds
    no GIL). A submit waits until the write before it is done, so the sink holds at most one output block
    beyond the engine's (budget.py counts it). A failed write is raised at the next submit or at drain."""

    def __init__(self) -> None:
        self._job: tuple[Callable[..., None], tuple] | None = None
        self._error: BaseException | None = None
        self._idle = threading.Semaphore(1)  # taken from a submit until its write is done
        self._wake = threading.Semaphore(0)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mergelab-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._idle.acquire()
        if self._error is not None:
            self._idle.release()
            self._raise()
        self._job = (fn, args)
        self._wake.release()

    def drain(self) -> None:
        """Wait for the write in flight; raise its error, if any."""
        self._idle.acquire()
        self._idle.release()
        if self._error is not None:
            self._raise()

    def close(self) -> None:
        """Finish the write in flight and stop the thread; an error left is dropped (the caller is
        aborting, or has drained)."""
        self._idle.acquire()
        self._closing = True
        self._wake.release()
        self._thread.join()

    def _raise(self) -> None:
        error, self._error = self._error, None
        raise error  # type: ignore[misc]

    def _run(self) -> None:
        while True:
            self._wake.acquire()
            if self._closing:
                return
            fn, args = self._job  # type: ignore[misc]
            self._job = None
            try:
                fn(*args)
            except BaseException as exc:  # raised on the engine's thread at its next submit or drain
                self._error = exc
            finally:
                self._idle.release()


class DirectorySink:
    """Writes a model directory loadable by `AutoModelForCausalLM.from_pretrained`.

    Refuses an existing non-empty `out_dir` at construction and again at begin (before any tensor is read).
    Tensor bytes are written on a thread, one tensor behind the engine (`_WriteBehind`).
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2_000_000_000):
        self.out_dir = Path(out_dir).expanduser().absolute()
        self.max_shard_bytes = max(1, int(max_shard_bytes))
        _check_target(self.out_dir)
        self.tmp_dir: Path | None = None
        self.bytes_written = 0
        self._base: Checkpoint | None = None
        self._plan: MergePlan | None = None
        self._shards: list[list[PlannedTensor]] = []
        self._writer: _ShardWriter | None = None
        self._shard_idx = -1
        self._pos = 0
        self._row = 0
        self._created_dirs: list[Path] = []
        self._behind: _WriteBehind | None = None

    def shard_names(self) -> list[str]:
        n = len(self._shards)
        if n <= 1:
            return [SINGLE_NAME]
        return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    def begin(self, base: Checkpoint, recipe: Recipe, plan: MergePlan) -> None:
        _check_target(self.out_dir)
        self._base, self._plan, self._pos, self.bytes_written = base, plan, 0, 0
        self._row = 0
        self._shards, self._writer, self._shard_idx = [], None, -1
        size = 0
        for t in plan.tensors:
            if not self._shards or (size + t.nbytes > self.max_shard_bytes and self._shards[-1]):
                self._shards.append([])
                size = 0
            self._shards[-1].append(t)
            size += t.nbytes
        self._created_dirs = [d for d in self.out_dir.parents if not d.exists()]  # abort removes if empty
        remove_stale_temps(self.out_dir)
        for attempt in range(5):  # a sibling merge's abort may remove an empty parent between our mkdirs
            try:
                self.out_dir.parent.mkdir(parents=True, exist_ok=True)
                self.tmp_dir = self.out_dir.parent / temp_name(self.out_dir)
                self.tmp_dir.mkdir()
                break
            except FileNotFoundError:
                self.tmp_dir = None
                if attempt == 4:
                    raise OutputError(f"cannot create the output next to {str(self.out_dir)!r}") from None
            except OSError as exc:
                self.tmp_dir = None
                raise OutputError(
                    f"cannot create the output next to {str(self.out_dir)!r}: {exc.strerror or exc}"
                ) from None
        self._stop_writes()
        self._behind = _WriteBehind()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_rows(name, 0, tensor)

    def write_rows(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Write rows [start, start + len) of tensor `name`; a tensor's blocks come in order, from row 0, and
        the tensor is complete with its last row (a whole tensor is one block)."""
        plan = self._plan
        if plan is None or self.tmp_dir is None:
            raise OutputError("DirectorySink.write called before begin")
        if self._pos >= len(plan.tensors) or plan.tensors[self._pos].name != name:
            expected = plan.tensors[self._pos].name if self._pos < len(plan.tensors) else "nothing"
            raise OutputError(f"tensor {name!r} written out of plan order (expected {expected!r})")
        want = plan.tensors[self._pos]
        whole = want.shape if len(want.shape) >= 2 or start else want.shape
        shape_ok = (
            tuple(rows.shape) == want.shape
            if len(want.shape) < 2
            else tuple(rows.shape[1:]) == want.shape[1:] and start + rows.shape[0] <= want.shape[0]
        )
        if start != self._row or not shape_ok or rows.dtype != want.dtype:
            raise OutputError(
                f"tensor {name!r} rows from {start}: {tuple(rows.shape)} {dtype_name(rows.dtype)}, "
                f"the plan says {whole} {dtype_name(want.dtype)} from row {self._row}"
            )
        done_rows = start + (rows.shape[0] if len(want.shape) >= 2 else 1)
        complete = done_rows >= (want.shape[0] if len(want.shape) >= 2 else 1)
        assert self._behind is not None
        self._behind.submit(self._write_bytes, name, start, rows, complete)
        self.bytes_written += rows.numel() * rows.element_size()
        if complete:
            self._row = 0
            self._pos += 1
        else:
            self._row = done_rows

    def _write_bytes(self, name: str, start: int, rows: torch.Tensor, complete: bool) -> None:
        """On the writer thread: open the next shard where a tensor starts one, append the rows' bytes, and
        close a shard as soon as its last tensor is complete (so it is complete on disk right away)."""
        assert self.tmp_dir is not None
        try:
            if start == 0 and (self._writer is None or self._writer.done):
                if self._writer is not None:
                    self._writer.close()
                self._shard_idx += 1
                shard = self._shards[self._shard_idx]
                self._writer = _ShardWriter(self.tmp_dir / self.shard_names()[self._shard_idx], shard)
            self._writer.write_bytes(rows)
        except OSError as exc:
            raise OutputError(
                f"cannot write {name!r} under {str(self.tmp_dir)!r}: {exc.strerror or exc}"
            ) from None
        if complete:
            self._writer.next += 1
            if self._writer.done:
                self._writer.close()

    def flush(self) -> None:
        """Wait until every tensor handed over so far is on disk (raising a write's error, if any)."""
        if self._behind is not None:
            self._behind.drain()

    def _stop_writes(self) -> None:
        if self._behind is not None:
            self._behind.close()
            self._behind = None

    def commit(self, result: MergeResult) -> Path:
        plan, base, tmp = self._plan, self._base, self.tmp_dir
        if plan is None or base is None or tmp is None:
            raise OutputError("DirectorySink.commit called before begin")
        if self._pos != len(plan.tensors):
            raise OutputError(f"only {self._pos} of {len(plan.tensors)} tensors were written")
        try:
            self.flush()
            self._stop_writes()
            if self._writer is not None:
                self._writer.close()
            names = self.shard_names()
            if len(names) > 1:
                index = {
                    "metadata": {"total_size": plan.nbytes},
                    "weight_map": {t.name: names[i] for i, shard in enumerate(self._shards) for t in shard},
                }
                (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            self._copy_base_files(base, tmp)
            if (
                plan.tokenizer_dir is not None
            ):  # a tokenizer built for this merge (union, other model, template)
                _copy_tokenizer_files(Path(plan.tokenizer_dir), tmp)
            (tmp / "config.json").write_text(json.dumps(_out_config(base.config, plan), indent=2) + "\n")
            (tmp / "merge_config.yml").write_text(result.recipe.to_yaml())
            (tmp / "README.md").write_text(model_card(result, base))
            _check_target(self.out_dir)
            if self.out_dir.exists():
                self.out_dir.rmdir()
            os.rename(tmp, self.out_dir)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot finish {str(self.out_dir)!r}: {exc.strerror or exc}") from None
        except BaseException:
            self.abort()
            raise
        self.tmp_dir = None
        self._created_dirs = []
        return self.out_dir

    def abort(self) -> None:
        """Remove this merge's temporary folder, and the parents begin() created if they are now empty.
        Never a non-empty folder: a sibling merge may be writing next to us (issue 11)."""
        self._stop_writes()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
        for d in self._created_dirs:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        self._created_dirs = []

    @staticmethod
    def _copy_base_files(base: Checkpoint, dest: Path) -> None:
        seen: set[str] = set()
        for pattern in COPIED_PATTERNS:
            for f in sorted(base.path.glob(pattern)):
                if f.is_file() and f.name not in seen and not f.name.endswith((".safetensors", ".bin")):
                    seen.add(f.name)
                    shutil.copyfile(f, dest / f.name)


def _copy_tokenizer_files(src: Path, dest: Path) -> None:
    """Replace the copied tokenizer with the one the plan built (every tokenizer file of the base goes)."""
    for f in dest.iterdir():
        if f.name != "generation_config.json" and any(f.match(p) for p in COPIED_PATTERNS):
            f.unlink()
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dest / f.name)


_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _out_config(config: dict[str, Any], plan: MergePlan) -> dict[str, Any]:
    """The base's config with its dtype key(s) set to the output dtype, and, when the plan changes them,
    the layer count (slices) and vocabulary size (a built tokenizer)."""
    out = dict(config)
    out.pop("_name_or_path", None)
    if plan.out_dtype is not None:
        keys = [k for k in ("dtype", "torch_dtype") if k in out] or ["dtype"]
        for k in keys:
            out[k] = plan.out_dtype
    inner = dict(out["text_config"]) if isinstance(out.get("text_config"), dict) else out
    if plan.num_layers is not None:
        key = next((k for k in _LAYER_COUNT_KEYS if isinstance(inner.get(k), int)), "num_hidden_layers")
        old = inner.get(key)
        inner[key] = plan.num_layers
        types = inner.get("layer_types")
        if isinstance(types, list) and types and len(types) != plan.num_layers:
            inner["layer_types"] = [types[i % len(types)] for i in range(plan.num_layers)]
        if old != plan.num_layers and isinstance(inner.get("max_window_layers"), int):
            inner["max_window_layers"] = min(inner["max_window_layers"], plan.num_layers)
    if plan.vocab_size is not None:
        inner["vocab_size"] = plan.vocab_size
    if inner is not out:
        out["text_config"] = inner
    return out


def model_card(result: MergeResult, base: Checkpoint) -> str:
    """A short README: what was merged, how, and the geometry summary."""
    recipe = result.recipe
    summary = result.stats.summary()
    lines = [
        "---",
        "library_name: transformers",
        "tags: [merge, mergelab]",
        *([f"base_model: {json.dumps(recipe.base_model)}"] if recipe.base_model else []),
        "---",
        "",
        f"# Merged model ({recipe.merge_method})",
        "",
        f"Merged by MergeLab from {len(recipe.models)} checkpoints"
        + (f" on base `{recipe.base_model}`" if recipe.base_model else "")
        + f" with `{recipe.merge_method}`. Architecture: {base.architecture}.",
        "",
        "## Recipe (mergekit YAML)",
        "",
        "```yaml",
        recipe.to_yaml().rstrip(),
        "```",
        "",
        "## Geometry",
        "",
        f"- ‖θ_merged − θ0‖₂ over all parameters: {summary['model_delta_norm']:.6g}",
        "- task-vector norms: " + ", ".join(f"{n:.6g}" for n in summary["model_task_norms"]),
        f"- mean pairwise cosine of task vectors: {_fmt(summary['mean_cosine'])}",
        f"- sign-conflict rate: {summary['sign_conflict']:.4f}",
        f"- tensors: {summary['tensors']}, merge time {result.seconds:.2f} s on {result.device}",
        f"- fingerprint: `{result.fingerprint}`",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


class ModelSink:
    """Copies merged tensors into a resident transformers model (parameters and persistent buffers).

    Reusable: every begin() starts a fresh merge into the same model. After abort() the model holds a mix
    of old and new weights: `stale` is True (and `complete` False) until the next committed merge, so no
    one evaluates a half-overwritten model.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.complete = False
        self.stale = False
        self._targets: dict[str, torch.Tensor] = {}
        self._written: set[int] = set()
        self._tie_copy: tuple[str, torch.Tensor] | None = None

    def begin(self, base: Checkpoint, recipe: Recipe, plan: MergePlan) -> None:
        self.complete = False
        self._written = set()
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(dict(self.model.named_buffers(remove_duplicate=False)))
        cfg = getattr(self.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        resident_layers = next(
            (getattr(cfg, k) for k in _LAYER_COUNT_KEYS if isinstance(getattr(cfg, k, None), int)), None
        )
        if plan.num_layers is not None and resident_layers is not None and plan.num_layers != resident_layers:
            raise CompatibilityError(
                f"this merge builds a model with {plan.num_layers} layers but the resident model has "
                f"{resident_layers}: it cannot be merged in place; save it to a directory instead"
            )
        for t in plan.tensors:
            target = targets.get(t.name)
            if target is None:
                raise CompatibilityError(
                    f"the resident model has no parameter {t.name!r} to receive the merge"
                )
            if tuple(target.shape) != t.shape:
                raise CompatibilityError(
                    f"the resident model's {t.name!r} has shape {tuple(target.shape)}, "
                    f"the merge gives {t.shape}"
                )
        self._targets = targets
        # A tied base stores no lm_head; if this model keeps a separate one, it gets the embedding.
        self._tie_copy = None
        planned = set(plan.names)
        embed = next((n for n in planned if "embed_tokens" in n), None)
        for name, p in targets.items():
            if (
                "lm_head" in name
                and name not in planned
                and embed
                and p.data_ptr() != targets[embed].data_ptr()
            ):
                self._tie_copy = (embed, p)

    @torch.no_grad()
    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_rows(name, 0, tensor)

    @torch.no_grad()
    def write_rows(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Copy rows [start, start + len) of `name` into the model (a whole tensor is rows from 0)."""
        target = self._targets.get(name)
        if target is None:
            raise OutputError(f"ModelSink.write: unexpected tensor {name!r}")
        self.stale = True  # until commit: the model now mixes old and new weights
        whole = rows.shape == target.shape and start == 0
        part = target if whole else target[start : start + rows.shape[0]]
        part.copy_(rows.to(device=target.device, dtype=target.dtype))
        if whole or start + rows.shape[0] >= target.shape[0]:
            self._written.add(target.data_ptr())
        if self._tie_copy is not None and self._tie_copy[0] == name:
            head = self._tie_copy[1]
            hpart = head if whole else head[start : start + rows.shape[0]]
            hpart.copy_(rows.to(device=head.device, dtype=head.dtype))
            if whole or start + rows.shape[0] >= head.shape[0]:
                self._written.add(head.data_ptr())

    def commit(self, result: MergeResult) -> None:
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if p.data_ptr() not in self._written:
                raise OutputError(f"the merge did not provide parameter {name!r} of the resident model")
        self.complete = True
        self.stale = False
        return None

    def abort(self) -> None:
        self.complete = False
