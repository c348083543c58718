"""The engine's worker threads set their own torch thread counts without changing anyone else's."""

from __future__ import annotations

import threading

import torch

from merging import DirectorySink, ModelEntry, Recipe, run_merge
from merging.threads import on_second_lane, torch_threads
from tests.merging.helpers import exit_code_in_forked_child


def _on_fresh_thread(fn):
    """fn's result, run on a thread that has not run a torch op yet (as a job's thread is)."""
    out: list = []
    errors: list = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised on the test's thread
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def test_torch_threads_restores_the_default_new_threads_take():
    with torch_threads(2):
        _on_fresh_thread(lambda: torch.set_num_threads(1))  # a worker that sets and leaves its count
        assert _on_fresh_thread(torch.get_num_threads) == 1
        torch.set_num_threads(2)

        def worker() -> int:
            with torch_threads(1):
                return torch.get_num_threads()

        assert _on_fresh_thread(worker) == 1
        assert _on_fresh_thread(torch.get_num_threads) == 2  # restored: later threads get the default


def test_a_merge_keeps_its_threads_count_and_the_default(tmp_path, tiny_llama_family, monkeypatch):
    """The engine's reader and geometry worker run on one torch thread each; the merge's own thread keeps
    the process default (the subspace methods' two lanes need it), and so does any thread started after.
    Tensor lanes off: with them each matrix merges on a lane of its own (test_tensor_lanes.py)."""
    import merging.budget as budget
    import merging.methods.subspace as subspace

    monkeypatch.setattr(budget, "plan_lanes", lambda plan, spec: plan)

    base, cks = tiny_llama_family
    seen: list[int] = []
    lanes = subspace.two_at_a_time

    def spy(a, jobs):
        if not subspace.in_lane():  # a lane's own calls run in order by design
            seen.append(2 if subspace.second_lane_free(a) else torch.get_num_threads())
        return lanes(a, jobs)

    monkeypatch.setattr(subspace, "two_at_a_time", spy)
    recipe = Recipe("tsvm", str(base), [ModelEntry(str(c), {}) for c in cks], {})
    with torch_threads(2):
        _on_fresh_thread(lambda: run_merge(recipe, DirectorySink(tmp_path / "out"), device="cpu"))
        assert seen and set(seen) == {2}
        assert _on_fresh_thread(torch.get_num_threads) == 2


def _second_lane_in_child() -> None:
    assert on_second_lane(threading.get_ident).result(timeout=10) != threading.get_ident()


def test_a_forked_child_gets_its_own_second_lane():
    assert on_second_lane(threading.get_ident).result() != threading.get_ident()  # the parent's worker runs
    assert exit_code_in_forked_child(_second_lane_in_child) == 0
