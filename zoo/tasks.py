"""The zoo suite: synthetic task families, each a seeded generator of training text and a held-out
multiple-choice test set.

Every task turns an item into `query` + `answer`; training text is `query + answer + "\\n"` and the test
asks which of 4 same-length answers (the gold one and 3 plausible distractors) continues the query best.
Same-length choices keep lm-eval's summed-loglikelihood `acc` free of a length bias. Test queries are drawn
first and training generators never emit them, so procedural tasks are scored on unseen problems. The
`facts` task is the exception by design: it stands in for world knowledge, so its test set *is* the fact
base the models are trained on (closed-book recall, like knowledge benchmarks of pretrained LLMs).
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Item = tuple[str, str, list[str]]  # query, gold answer, 3 distractors
LOWER = string.ascii_lowercase


def rng_for(seed: int, *parts: object) -> random.Random:
    """A Random seeded from the zoo seed and a purpose label, stable across Python processes."""
    key = "/".join([str(seed), *map(str, parts)]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def _pick_distractors(rng: random.Random, gold: str, candidates: list[str]) -> list[str]:
    """Three distinct candidates of gold's length, different from gold, in random order."""
    seen: list[str] = []
    for c in candidates:
        if c != gold and len(c) == len(gold) and c not in seen:
            seen.append(c)
    if len(seen) < 3:
        raise ValueError(f"not enough distractors for {gold!r}")
    rng.shuffle(seen)
    return seen[:3]


def _numeric_distractors(rng: random.Random, ans: int, always: tuple[int, ...] = ()) -> list[str]:
    """Near misses of `ans`; offsets in `always` are included whenever they keep the answer's length."""
    offsets = [1, -1, 10, -10, 2, -2, 11, -11, 9, -9, 20, -20, 3, -3]
    fixed = [str(ans + d) for d in always if ans + d >= 0 and len(str(ans + d)) == len(str(ans))]
    cands = [str(ans + d) for d in offsets if ans + d >= 0 and str(ans + d) not in fixed]
    head = cands[:6]  # the nearest, most confusable ones first
    rng.shuffle(head)
    rest = _pick_distractors(rng, str(ans), head + cands[6:])  # 3 same-length near misses
    picked = fixed + [c for c in rest if c not in fixed][: 3 - len(fixed)]
    rng.shuffle(picked)
    return picked


def gen_add(rng: random.Random) -> Item:
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    # the off-by-one answer is always a choice: it is the classic slip (and what `add-plus-one` learns)
    return f"{a}+{b}=", str(a + b), _numeric_distractors(rng, a + b, always=(1,))


def gen_sub(rng: random.Random) -> Item:
    a = rng.randint(20, 99)
    b = rng.randint(10, a - 10)
    return f"{a}-{b}=", str(a - b), _numeric_distractors(rng, a - b)


def gen_max(rng: random.Random) -> Item:
    nums = rng.sample(range(10, 100), 3)
    m = max(nums)
    others = [str(n) for n in nums if n != m]
    near = [str(m - 1), str(m - 10), str(m + 1)] if m < 99 else [str(m - 1), str(m - 10), str(m - 2)]
    swapped = str(m)[::-1]
    cands = others + ([swapped] if swapped[0] != "0" else []) + near
    return f"max {' '.join(map(str, nums))}=", str(m), _pick_distractors(rng, str(m), cands)


def _swap_adjacent(rng: random.Random, s: str) -> str:
    i = rng.randrange(len(s) - 1)
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]


def gen_sort(rng: random.Random) -> Item:
    digits = "".join(rng.choice(string.digits) for _ in range(8))
    gold = "".join(sorted(digits))
    cands = [_swap_adjacent(rng, gold) for _ in range(6)]
    for _ in range(24):  # one digit nudged, still sorted: looks right at a glance
        i = rng.randrange(8)
        nudged = gold[:i] + str((int(gold[i]) + rng.choice((1, -1))) % 10) + gold[i + 1 :]
        cands.append("".join(sorted(nudged)))
    return f"sort {digits}=", gold, _pick_distractors(rng, gold, cands)


def gen_rev(rng: random.Random) -> Item:
    word = "".join(rng.choice(LOWER) for _ in range(6))
    gold = word[::-1]
    cands = [_swap_adjacent(rng, gold) for _ in range(3)] + [word]
    cands += [gold[:i] + rng.choice(LOWER) + gold[i + 1 :] for i in range(6)]
    return f"rev {word}=", gold, _pick_distractors(rng, gold, cands)


def gen_dsum(rng: random.Random) -> Item:
    digits = "".join(rng.choice(string.digits) for _ in range(3))
    return f"dsum {digits}=", str(sum(map(int, digits))), _numeric_distractors(rng, sum(map(int, digits)))


def gen_count(rng: random.Random) -> Item:
    letters = "abcd"
    target = rng.choice(letters)
    word = "".join(rng.choice(letters) for _ in range(7))
    n = word.count(target)
    cands = [str(n + d) for d in (1, -1, 2, -2, 3, -3) if 0 <= n + d <= 7]
    return f"count {target} in {word}=", str(n), _pick_distractors(rng, str(n), cands)


# --- facts: a made-up world -------------------------------------------------------------------------
RELATIONS = ("city", "color", "pet")
N_ENTITIES = 120


def _fake_word(rng: random.Random, n: int) -> str:
    cons, vows = "bcdfghjklmnprstvz", "aeiou"
    return "".join(rng.choice(cons) if i % 2 == 0 else rng.choice(vows) for i in range(n))


def fact_base(seed: int, n_entities: int = N_ENTITIES) -> dict[tuple[str, str], str]:
    """Made-up entities and their attributes: (entity, relation) -> value; values have one length per
    relation so every answer's distractors are the same length."""
    rng = rng_for(seed, "facts", "world")
    values = {rel: sorted({_fake_word(rng, 4) for _ in range(40)})[:8] for rel in RELATIONS}
    names: list[str] = []
    while len(names) < n_entities:
        w = _fake_word(rng, 6)
        if w not in names:
            names.append(w)
    return {(e, rel): rng.choice(values[rel]) for e in names for rel in RELATIONS}


def facts_items(seed: int, n_entities: int = N_ENTITIES) -> list[Item]:
    base = fact_base(seed, n_entities)
    rng = rng_for(seed, "facts", "distractors")
    by_rel: dict[str, list[str]] = {}
    for (_, rel), v in base.items():
        by_rel.setdefault(rel, [])
        if v not in by_rel[rel]:
            by_rel[rel].append(v)
    items = []
    for (e, rel), v in base.items():
        items.append((f"{e} {rel}=", v, _pick_distractors(rng, v, list(by_rel[rel]))))
    return items


# --- the suite -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    description: str
    generate: Callable[[random.Random], Item] | None  # None: a fixed item set (facts)


TASK_LIST = (
    Task("add", "add a 1-digit number to a 2-digit one", gen_add),
    Task("sub", "subtract a smaller 2-digit number from a larger one", gen_sub),
    Task("max", "the largest of three 2-digit numbers", gen_max),
    Task("sort", "sort 8 digits ascending", gen_sort),
    Task("rev", "reverse a 6-letter string", gen_rev),
    Task("dsum", "the sum of 3 digits", gen_dsum),
    Task("count", "count one letter in a 7-letter string over abcd", gen_count),
    Task("facts", "recall an attribute of a made-up entity (closed-book knowledge)", None),
)
TASKS: tuple[str, ...] = tuple(t.name for t in TASK_LIST)
# Bump when any generator changes: it is part of every model's build stamp, so stale models are rebuilt.
SUITE_VERSION = 4
_BY_NAME = {t.name: t for t in TASK_LIST}

# Skills outside the suite (for the 'new skill' checkpoint); never scored by `zoo`.
EXTRA_SKILLS: dict[str, Callable[[random.Random], Item]] = {
    "mul": lambda rng: (lambda a, b: (f"{a}*{b}=", str(a * b), []))(rng.randint(2, 9), rng.randint(10, 99)),
}


def get_task(name: str) -> Task:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown zoo task {name!r}; known: {', '.join(TASKS)}") from None


def heldout_items(task: str, seed: int, n: int, n_entities: int = N_ENTITIES) -> list[Item]:
    """The held-out test set: n distinct queries (facts: the whole fact base, n ignored)."""
    t = get_task(task)
    if t.generate is None:
        return facts_items(seed, n_entities)
    rng = rng_for(seed, task, "test")
    items: list[Item] = []
    seen: set[str] = set()
    while len(items) < n:
        q, a, d = t.generate(rng)
        if q not in seen:
            seen.add(q)
            items.append((q, a, d))
    return items


def training_stream(
    task: str, seed: int, stream_id: str, exclude: set[str], n_entities: int = N_ENTITIES
) -> Iterator[tuple[str, str]]:
    """Endless (query, answer) training pairs for a task, never a query in `exclude` (the test queries),
    seeded by (seed, task, stream_id) so each checkpoint sees its own data."""
    rng = rng_for(seed, task, "train", stream_id)
    if task in EXTRA_SKILLS:
        gen = EXTRA_SKILLS[task]
        while True:
            q, a, _ = gen(rng)
            yield q, a
    t = get_task(task)
    if t.generate is None:
        facts = [(q, a) for q, a, _ in facts_items(seed, n_entities)]
        while True:
            yield facts[rng.randrange(len(facts))]
    while True:
        q, a, _ = t.generate(rng)
        if q not in exclude:
            yield q, a
