"""Models to score: loaded from a checkpoint directory or Hub id, or held resident for many merges.

A study scores dozens of merges of one base. Loading a fresh model for each would dominate the run, so a
`ResidentModel` keeps one transformers model of the base in memory; the merge engine's model sink writes
each merge's weights into it and `ResidentModel.score` evaluates it under that merge's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaluation.devices import resolve_device, resolve_dtype
from evaluation.errors import EvaluationError
from evaluation.harness import evaluate


@dataclass
class LoadedModel:
    """A transformers causal LM with its tokenizer, and the fingerprint that keys its cached scores."""

    model: Any
    tokenizer: Any
    fingerprint: str
    ref: str


def checkpoint_fingerprint(ref: str | Path, *, allow_bin: bool = False) -> str:
    """The checkpoint's fingerprint as the merge engine defines it
    (`merging.open_checkpoint(ref).fingerprint`), so scores cached here are found again by the jobs
    layer under the same key."""
    from merging import MergeError, open_checkpoint

    try:
        return open_checkpoint(ref, allow_bin=allow_bin).fingerprint
    except MergeError as err:
        raise EvaluationError(f"cannot fingerprint {ref}: {err}") from None


def load_model(
    ref: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto", allow_bin: bool = False
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory or a Hub id, in eval mode on `device`.

    Never runs code from the checkpoint: `trust_remote_code` stays off, and pickled .bin weights are refused
    before anything is unpickled unless `allow_bin` opts in (then they load with weights_only=True)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_s = str(ref)
    local = Path(ref_s).expanduser()
    if local.exists() and not local.is_dir():
        raise EvaluationError(f"{ref_s} is a file; give a checkpoint directory or a Hub id")
    if not local.exists() and (
        isinstance(ref, Path) or ref_s.startswith((".", "/", "~")) or ref_s.count("/") > 1
    ):
        raise EvaluationError(f"checkpoint directory {ref_s} not found")
    source = str(local) if local.is_dir() else ref_s
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    fingerprint = checkpoint_fingerprint(source, allow_bin=allow_bin)  # validates the weight files first
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise EvaluationError(
            f"{ref_s} has no usable tokenizer ({_first_line(err)}); save the tokenizer next to the weights"
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=False, use_safetensors=None if allow_bin else True
        )
    except OSError as err:
        hint = (
            " (offline: HF_HUB_OFFLINE is set and the model is not in the local cache)"
            if not local.is_dir()
            else ""
        )
        raise EvaluationError(f"cannot load model {ref_s}{hint}: {_first_line(err)}") from None
    except ValueError as err:
        raise EvaluationError(
            f"{ref_s} is not a causal language model transformers can load: {_first_line(err)}"
        ) from None
    model.to(dev).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, fingerprint=fingerprint, ref=ref_s)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ResidentModel:
    """One in-memory model of a base, reused for many merges.

    Usage: ``rm = ResidentModel(base_dir)``; the engine's ``merging.ModelSink(rm.model)`` (or
    ``rm.load_state_dict(sd)``) writes a merge's weights in; ``rm.score(suite, fingerprint=merge_fp,
    model_name=...)`` evaluates what is resident now; ``rm.restore_base()`` puts the base weights back.
    """

    def __init__(self, base: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto") -> None:
        loaded = load_model(base, device=device, dtype=dtype)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.base_fingerprint = loaded.fingerprint
        self.ref = loaded.ref
        self.device = str(next(self.model.parameters()).device)
        self.dtype = next(self.model.parameters()).dtype
        # No copy of the base is kept: restore_base reads it back from the memory-mapped safetensors files.
        self.fingerprint = self.base_fingerprint

    @property
    def nbytes(self) -> int:
        """Bytes the resident's weights occupy on its device (tied tensors counted once)."""
        seen: dict[int, int] = {}
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())

    def load_state_dict(self, state: dict[str, torch.Tensor], *, fingerprint: str | None = None) -> None:
        """Copy weights into the resident model (strict: every tensor of the base must be given)."""
        with torch.no_grad():
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_names(self.model)]
        if missing or unexpected:
            raise EvaluationError(
                f"weights do not fit the resident {self.ref}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        self.fingerprint = fingerprint

    def restore_base(self) -> None:
        """Put the base weights back (after a merge was scored, or a merge that failed half-way), reading
        them from the base checkpoint's memory-mapped files instead of a second copy held in memory."""
        from merging import MergeError, open_checkpoint

        self.fingerprint = None  # unknown contents until every tensor is back
        try:
            ck = open_checkpoint(self.ref)
        except MergeError as err:
            raise EvaluationError(f"cannot restore the base {self.ref}: {err}") from None
        with ck, torch.no_grad():
            if ck.fingerprint != self.base_fingerprint:
                raise EvaluationError(
                    f"the base {self.ref} changed on disk since it was loaded; its merges must be redone"
                )
            state = self.model.state_dict(keep_vars=True)
            done: set[int] = set()
            for name, target in state.items():
                if name in ck.tensors:
                    source = ck.read(name)
                elif "lm_head" in name and ck.tied_embeddings:
                    if target.data_ptr() in done:
                        continue  # tied to the embedding, already restored
                    source = ck.read(next(n for n in ck.tensors if "embed_tokens" in n))
                elif target.data_ptr() in done:
                    continue
                else:
                    raise EvaluationError(f"the base {self.ref} has no tensor {name!r} to restore")
                if tuple(source.shape) != tuple(target.shape):
                    raise EvaluationError(
                        f"the base {self.ref} changed on disk: {name} is {tuple(source.shape)}, "
                        f"the resident model has {tuple(target.shape)}"
                    )
                target.copy_(source.to(device=target.device, dtype=target.dtype))
                done.add(target.data_ptr())
        self.fingerprint = self.base_fingerprint

    def score(self, suite, *, fingerprint: str | None = None, model_name: str | None = None, **kwargs):
        """Evaluate whatever is resident now under `fingerprint` (the merge's; defaults to the fingerprint
        last set by `load_state_dict`/`restore_base`). kwargs are `evaluate`'s."""
        fp = fingerprint or self.fingerprint
        if not fp:
            raise EvaluationError("score() needs the fingerprint of the merge now resident in the model")
        return evaluate(
            self.model, self.tokenizer, suite, fingerprint=fp, model_name=model_name or fp, **kwargs
        )


def _tied_names(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys if isinstance(keys, list | tuple | set) else keys.keys())
