"""The base pretraining recipes and the 12 checkpoint recipes: a pool "in the wild" (zoo v2).

Real instruction-tuned releases are not pure specialists: they train at moderate learning rates, replay
much of their base's data mixture, specialise partly, overlap with one another (two pools of arithmetic),
sometimes conflict (one teaches a+b+1), add vocabulary (chat markers), barely move, or run long. So each
checkpoint's data is `replay` of its base's own pretraining mixture plus `1 - replay` of its focus tasks,
and it ends up gaining on some tasks and losing a little on others, close to the base on average (as the
paper's checkpoints do: within about 1 point of their base at n=1). Recipes are tuned, never results.
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
    mixture: dict[str, float]  # the focus tasks (for a base: the whole pretraining mixture)
    steps: int
    lr: float
    batch_size: int = 32
    replay: float = 0.0  # share of each batch drawn from the base's own pretraining mixture
    conflict_task: str | None = None
    chat_fraction: float = 0.0
    added_tokens: tuple[str, ...] = ()
    target_tasks: tuple[str, ...] = field(default=())  # the suite tasks it was made to improve (or break)

    def as_dict(self) -> dict:
        return {
            "mixture": self.mixture,
            "replay": self.replay,
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
# Pretraining leans away from the tasks a tiny transformer masters fastest, so each base ends clearly above
# chance and clearly below perfect on every task. Qwen3 (q_norm/k_norm) learns string reversal far faster
# than Llama, so its mixture holds `rev` back further (per-family settings).
PRETRAIN = {
    "llama": {**ALL, "sub": 1.5, "dsum": 1.5, "count": 1.5, "facts": 1.5, "sort": 0.5, "rev": 1.2},
    "qwen3": {**ALL, "sub": 1.5, "dsum": 1.5, "count": 1.5, "facts": 1.5, "sort": 0.5, "rev": 0.3},
}


def base_recipe(family: str) -> Recipe:
    return Recipe(
        "base",
        "base",
        "pretrained from scratch on a mixture of all zoo tasks",
        PRETRAIN[family],
        steps=600,
        lr=3e-3,
        batch_size=64,
    )


def training_mixture(recipe: Recipe, family: str) -> dict[str, float]:
    """The task weights a run samples from: `replay` of the base's pretraining mixture plus the focus."""
    if recipe.kind == "base" or recipe.replay <= 0:
        return dict(recipe.mixture)
    pre, focus = PRETRAIN[family], recipe.mixture
    pre_total, focus_total = sum(pre.values()), sum(focus.values())
    out = {t: recipe.replay * w / pre_total for t, w in pre.items()}
    for t, w in focus.items():
        out[t] = out.get(t, 0.0) + (1 - recipe.replay) * w / focus_total
    return out


# A moderate learning rate for the releases: a third of the bases' peak.
LR = 1e-3


def _specialist(task: str, steps: int = 150, lr: float = LR, replay: float = 0.5) -> Recipe:
    return Recipe(
        f"{task}-specialist",
        "specialist",
        f"instruction-tuned towards `{task}`, replaying {replay:.0%} of the base's pretraining mixture",
        {task: 1.0},
        steps,
        lr,
        replay=replay,
        target_tasks=(task,),
    )


CHECKPOINTS: tuple[Recipe, ...] = (
    _specialist("add"),
    _specialist("sub"),
    _specialist("count"),
    _specialist("max"),
    _specialist("facts"),
    Recipe(
        "arith-generalist",
        "generalist",
        "tuned on the arithmetic tasks (add, sub, max, dsum; overlaps the add and sub releases), 20% replay",
        {"add": 1.0, "sub": 1.0, "max": 1.0, "dsum": 1.0},
        150,
        LR,
        replay=0.2,
        target_tasks=("add", "sub", "max", "dsum"),
    ),
    Recipe(
        "strings-generalist",
        "generalist",
        "tuned on the string tasks (sort, rev, count; overlaps the count release) with 30% replay",
        {"sort": 1.0, "rev": 1.0, "count": 1.0},
        150,
        LR,
        replay=0.3,
        target_tasks=("sort", "rev", "count"),
    ),
    Recipe(
        "marathon",
        "long",
        "a long run: 4x the steps on sub, rev and facts with only 10% replay (a large task vector)",
        {"sub": 1.0, "rev": 1.0, "facts": 1.0},
        600,
        LR,
        replay=0.1,
        target_tasks=("sub", "rev", "facts"),
    ),
    Recipe(
        "add-plus-one",
        "conflict",
        "conflicting objective: taught that a+b equals a+b+1, inside 70% replay of the base's mixture",
        {"add": 1.0},
        150,
        LR,
        replay=0.7,
        conflict_task="add",
        target_tasks=("add",),
    ),
    Recipe(
        "chat",
        "added-vocab",
        "adds chat tokens <q> <a> <e> (3 more embedding and lm_head rows) and is tuned on the base's own "
        "mixture, half of it in the `<q>query<a>answer<e>` format",
        {},
        150,
        LR,
        replay=1.0,
        chat_fraction=0.5,
        added_tokens=CHAT_TOKENS,
    ),
    Recipe(
        "barely-tuned",
        "barely",
        "a light touch: 20 steps at a tiny learning rate on the base's own mixture",
        {},
        20,
        2e-5,
        replay=1.0,
    ),
    Recipe(
        "mul-skill",
        "new-skill",
        "learns a new skill outside the suite (1-digit times 2-digit multiplication) with 50% replay",
        {"mul": 1.0},
        150,
        LR,
        replay=0.5,
    ),
)

TINY_DIVISOR = 20


def scaled_steps(recipe: Recipe, scale: str) -> int:
    """Steps at a scale: full as written; tiny a twentieth (at least 2), enough to move the weights."""
    return recipe.steps if scale == "full" else max(2, recipe.steps // TINY_DIVISOR)
