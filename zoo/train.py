"""Training on the zoo tasks: model configs per family and scale, and one small, deterministic loop used
for both pretraining the bases and fine-tuning the checkpoints (full fine-tuning, so task vectors are dense).

Each example is one sequence `query + answer + "\\n"` starting at position 0 with no BOS, exactly as lm-eval
presents a query to a causal LM; the loss covers the answer and its newline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, PreTrainedModel, Qwen3Config

from zoo.tasks import N_ENTITIES, rng_for, training_stream
from zoo.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, encode

FAMILIES = ("llama", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SIZES = {
    "full": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}
MAX_LEN = 64


class BuildCancelled(Exception):
    """Raised inside a build when `should_cancel()` turned true; nothing half-written is left complete."""


def model_config(family: str, scale: str, vocab_size: int = VOCAB_SIZE):
    size = SIZES[scale]
    common = dict(
        vocab_size=vocab_size,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        rms_norm_eps=1e-5,
        **size,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen3":
        return Qwen3Config(head_dim=size["hidden_size"] // size["num_attention_heads"], **common)
    raise ValueError(f"unknown zoo family {family!r}; choose one of {', '.join(FAMILIES)}")


@dataclass
class TrainSpec:
    """What one training run sees: a task mixture and how its examples are formatted."""

    mixture: dict[str, float]
    steps: int
    lr: float
    batch_size: int = 64
    warmup_frac: float = 0.05
    stream_id: str = "pretrain"
    conflict_task: str | None = None  # that task's answers are shifted by +1 (a conflicting objective)
    chat_fraction: float = 0.0  # fraction of examples in the "<q>query<a>answer" chat format
    added: dict[str, int] = field(default_factory=dict)  # added token -> id
    n_entities: int = N_ENTITIES  # size of the fact world


def _format(q: str, a: str, task: str, spec: TrainSpec, rng: random.Random) -> tuple[str, str]:
    if spec.conflict_task == task:
        a = str(int(a) + 1)
    if spec.chat_fraction and rng.random() < spec.chat_fraction:
        return f"<q>{q}<a>", f"{a}<e>"
    return q, a + "\n"


def train(
    model: PreTrainedModel,
    spec: TrainSpec,
    seed: int,
    exclude: dict[str, set[str]],
    on_step: Callable[[], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> float:
    """Train `model` in place with AdamW and warmup + cosine decay; returns the last 20 steps' mean loss.

    `seed` is the zoo seed (it fixes the task data and the fact world); the run's own randomness comes
    from (seed, spec.stream_id), so different checkpoints see different samples of the same world."""
    run_rng = rng_for(seed, "run", spec.stream_id)
    torch.manual_seed(run_rng.getrandbits(63))
    rng = random.Random(run_rng.getrandbits(63))
    tasks = list(spec.mixture)
    weights = [spec.mixture[t] for t in tasks]
    streams = {
        t: training_stream(t, seed, spec.stream_id, exclude.get(t, set()), spec.n_entities) for t in tasks
    }
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, int(spec.steps * spec.warmup_frac))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, spec.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    for _ in range(spec.steps):
        if should_cancel is not None and should_cancel():
            raise BuildCancelled("build cancelled")
        rows, masks = [], []
        for task in rng.choices(tasks, weights, k=spec.batch_size):
            q, a = next(streams[task])
            q, a = _format(q, a, task, spec, rng)
            qi, ai = encode(q, spec.added), encode(a, spec.added)
            rows.append(qi + ai)
            masks.append([0] * len(qi) + [1] * len(ai))
        width = min(MAX_LEN, max(map(len, rows)))
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        lab = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
            r, m = r[:width], m[:width]
            ids[i, : len(r)] = torch.tensor(r)
            lab[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        logits = model(input_ids=ids).logits[:, :-1]
        target = ids[:, 1:]
        keep = lab[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[keep], target[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step()
    model.eval()
    tail = losses[-20:]
    return sum(tail) / max(1, len(tail))
