"""Job kinds for the worker tests. Module-level, so the worker process imports them by name like the
built-in kinds: a real merge whose sink is slowed down (so a test can kill the worker mid-write), and a
job that ignores cancellation."""

from __future__ import annotations

import time
from pathlib import Path

from jobs import register_kind
from jobs.work import TrackedDirectorySink, run_merge_tracked


class SlowSink(TrackedDirectorySink):
    """The real directory sink, pausing after each tensor and reporting what it wrote."""

    def __init__(self, out, on_temp, on_done, ctx, pause: float):
        super().__init__(out, on_temp, on_done)
        self.ctx, self.pause, self.written = ctx, pause, 0

    def write(self, name, tensor) -> None:
        super().write(name, tensor)
        self.written += 1
        self.ctx.progress(0.0, f"writing tensor {self.written}: {name}", force=True)
        time.sleep(self.pause)


def run_slow_merge(ctx, params):
    """A real merge into params['output'], about `pause` seconds per tensor."""
    from merging import Recipe

    recipe = Recipe.from_yaml(params["recipe_yaml"])
    merge_id = ctx.store.begin_merge(
        recipe_yaml=params["recipe_yaml"],
        method=recipe.merge_method,
        base_fingerprint=None,
        checkpoint_refs=[m.model for m in recipe.models],
        job_id=ctx.job_id,
    )
    sink = SlowSink(params["output"], ctx.add_temp_path, ctx.drop_temp_path, ctx, params.get("pause", 0.3))
    result, _ = run_merge_tracked(recipe, sink, device=ctx.device, should_cancel=ctx.should_cancel)
    ctx.store.finish_merge(merge_id, "done", output_path=str(result.output_path))
    return {"merge_id": merge_id}


def run_stubborn(ctx, params):
    """Declares a temporary file, then never looks at cancellation."""
    out = Path(params["dir"]) / "stubborn.part"
    ctx.add_temp_path(out)
    out.write_bytes(b"partial")
    ctx.progress(0.1, "ignoring everyone", force=True)
    time.sleep(600)


def run_chatty(ctx, params):
    """Reports progress nonstop and never looks at cancellation."""
    while True:
        ctx.progress(0.5, "chatting", force=True)


def run_hello(ctx, params):
    import os

    return {"pid": os.getpid(), "home": os.environ.get("MERGELAB_HOME")}


def run_tuple_keys(ctx, params):
    """A result that pickles but that the store cannot write as JSON (tuple keys)."""
    return {(1, 2): "pair"}


def run_unpicklable(ctx, params):
    """A result that cannot even travel back to the app."""
    return {"callback": lambda: None}


register_kind("test-tuple-keys", run_tuple_keys)
register_kind("test-unpicklable", run_unpicklable)
register_kind("test-slow-merge", run_slow_merge)
register_kind("test-stubborn", run_stubborn)
register_kind("test-chatty", run_chatty)
register_kind("test-hello", run_hello)
