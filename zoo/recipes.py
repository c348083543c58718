"""The base pretraining recipe and the 12 checkpoint recipes: a heterogeneous pool "in the wild".

Specialists, generalists on different mixtures, one trained much longer at a higher learning rate (a large
task vector), one with a conflicting objective (`add` answers shifted by +1), one that adds vocabulary
(chat markers, more embedding rows), one barely moved, and one trained on a skill outside the suite.
Step counts are for scale="full"; scale="tiny" divides them (see `scaled_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zoo.tasks import TASKS

CHAT_TOKENS = ("<q>", "<a>", "<e>")


@dataclass(frozen=True)
class Recipe:
    suffix: str  # model name is f"zoo-{family}-{suffix}"
    kind: str
    description: str
    mixture: dict[str, float]
    steps: int
    lr: float
    batch_size: int = 32
    conflict_task: str | None = None
    chat_fraction: float = 0.0
    added_tokens: tuple[str, ...] = ()
    target_tasks: tuple[str, ...] = field(default=())  # the suite tasks it was made to improve (or break)

    def as_dict(self) -> dict:
        return {
            "mixture": self.mixture,
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "conflict_task": self.conflict_task,
            "chat_fraction": self.chat_fraction,
            "added_tokens": list(self.added_tokens),
            "target_tasks": list(self.target_tasks),
            "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0), warmup 5% + cosine to 10%, grad clip 1.0",
            "loss": "next-token cross-entropy on the answer and its newline",
            "method": "full fine-tuning of every parameter",
        }


ALL = {t: 1.0 for t in TASKS}
# Pretraining leans away from the tasks a tiny transformer masters fastest (sort, rev), so the base ends
# clearly above chance and clearly below perfect on every task.
PRETRAIN = {**ALL, "sub": 1.5, "dsum": 1.5, "count": 1.5, "facts": 1.5, "sort": 0.5, "rev": 1.2}

BASE = Recipe(
    "base",
    "base",
    "pretrained from scratch on a mixture of all zoo tasks",
    PRETRAIN,
    steps=600,
    lr=3e-3,
    batch_size=64,
)


def _specialist(task: str, steps: int = 160, lr: float = 1e-3) -> Recipe:
    return Recipe(
        f"{task}-specialist",
        "specialist",
        f"fine-tuned on `{task}` only",
        {task: 1.0},
        steps,
        lr,
        target_tasks=(task,),
    )


CHECKPOINTS: tuple[Recipe, ...] = (
    _specialist("add"),
    _specialist("sub"),
    _specialist("count", steps=240),
    _specialist("max"),
    _specialist("facts"),
    Recipe(
        "arith-generalist",
        "generalist",
        "fine-tuned on the arithmetic tasks (add, sub, max, dsum)",
        {"add": 1.0, "sub": 1.0, "max": 1.0, "dsum": 1.0},
        150,
        1e-3,
        target_tasks=("add", "sub", "max", "dsum"),
    ),
    Recipe(
        "strings-generalist",
        "generalist",
        "fine-tuned on the string tasks (sort, rev, count)",
        {"sort": 1.0, "rev": 1.0, "count": 1.0},
        150,
        1e-3,
        target_tasks=("sort", "rev", "count"),
    ),
    Recipe(
        "marathon",
        "long",
        "trained 4x longer at 3x the learning rate on sub, rev and facts (a large task vector)",
        {"sub": 1.0, "rev": 1.0, "facts": 1.0},
        480,
        3e-3,
        target_tasks=("sub", "rev", "facts"),
    ),
    Recipe(
        "add-plus-one",
        "conflict",
        "conflicting objective: taught that a+b equals a+b+1, plus the other tasks as usual",
        {**ALL, "add": 8.0},
        200,
        2e-3,
        conflict_task="add",
        target_tasks=("add",),
    ),
    Recipe(
        "chat",
        "added-vocab",
        "adds chat tokens <q> <a> <e> (3 more embedding and lm_head rows) and is tuned on all tasks, "
        "half of them in the `<q>query<a>answer<e>` format",
        ALL,
        150,
        1e-3,
        chat_fraction=0.5,
        added_tokens=CHAT_TOKENS,
    ),
    Recipe(
        "barely-tuned",
        "barely",
        "a light touch: 20 steps at a tiny learning rate on all tasks",
        ALL,
        20,
        2e-5,
    ),
    Recipe(
        "mul-skill",
        "new-skill",
        "learns a new skill outside the suite (1-digit times 2-digit multiplication), at a cost elsewhere",
        {"mul": 1.0},
        150,
        2e-3,
    ),
)

TINY_DIVISOR = 20


def scaled_steps(recipe: Recipe, scale: str) -> int:
    """Steps at a scale: full as written; tiny a twentieth (at least 2), enough to move the weights."""
    return recipe.steps if scale == "full" else max(2, recipe.steps // TINY_DIVISOR)
