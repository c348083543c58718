"""Tensor lanes (threads.TensorLanes, engine._InOrder): the subspace methods' matrices merge two at a time,
each on one torch thread, and come out with the bytes and the figures of one tensor after the other, in
plan order; only where the budget holds them; errors and cancellation stop the lanes and leave nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

import merging.budget as budget
import merging.engine as engine
from merging import DirectorySink, run_merge
from merging.budget import lanes_extra, peak_estimate
from merging.errors import MergeCancelled, NonFiniteError
from merging.reader import HeldStacks, ReadUnit
from merging.threads import TensorLanes, in_lane
from tests.merging.helpers import leftovers, recipe

SUBSPACE = ["tsvm", "iso_c", "iso_cts"]
# Boosted methods: the base method's passes stay on the engine's thread, the boost runs on a lane
BOOSTED = {"task_arithmetic_sb": {"weight": 1.0}, "ties_sb": {"weight": 1.0, "density": 0.5}}


def _lane_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mergelab-tensor")]


def _planned_lanes(monkeypatch) -> list[list[str]]:
    """Spy on budget.plan_lanes: the names of the lane tensors of every plan it returns."""
    seen: list[list[str]] = []
    real = budget.plan_lanes

    def spy(plan, spec):
        out = real(plan, spec)
        seen.append([t.name for t in out.tensors if t.lane])
        return out

    monkeypatch.setattr(budget, "plan_lanes", spy)
    return seen


def _files(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.glob("*.safetensors"))}


@pytest.mark.parametrize("method", [*SUBSPACE, *BOOSTED])
def test_lanes_give_the_bytes_and_figures_of_one_tensor_after_the_other(
    two_threads, tmp_path, tiny_llama_family, monkeypatch, method
):
    base, cks = tiny_llama_family
    per_model = BOOSTED.get(method, {})
    seen = _planned_lanes(monkeypatch)
    jobs: list[tuple[str, int, bool]] = []
    real_job = engine._merge_whole

    def job(merger, passes, block):
        jobs.append((threading.current_thread().name, torch.get_num_threads(), in_lane()))
        return real_job(merger, passes, block)

    monkeypatch.setattr(engine, "_merge_whole", job)
    on = run_merge(recipe(method, base, cks, per_model), DirectorySink(tmp_path / "on"), device="cpu")
    assert seen[0] and all(".weight" in n for n in seen[0])
    assert "model.embed_tokens.weight" not in seen[0]  # the mean, with the vectors, on the engine's thread
    assert len(jobs) == len(seen[0])
    assert all(name.startswith("mergelab-tensor") and n == 1 and lane for name, n, lane in jobs)
    assert torch.get_num_threads() == 2  # the lanes' counts are their own
    fresh: list[int] = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [2]  # and so is the default a thread started later takes

    monkeypatch.setattr(budget, "plan_lanes", lambda plan, spec: plan)
    off = run_merge(recipe(method, base, cks, per_model), DirectorySink(tmp_path / "off"), device="cpu")
    assert _files(tmp_path / "on") == _files(tmp_path / "off")  # tensors, their order, the header
    assert repr(on.stats) == repr(off.stats)  # every figure, recorded in the same order
    assert on.fingerprint == off.fingerprint
    assert _lane_threads() == []


def test_no_lanes_for_other_methods_nor_on_one_thread(tmp_path, tiny_llama_family, monkeypatch):
    base, cks = tiny_llama_family
    seen = _planned_lanes(monkeypatch)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_merge(
            recipe("ties", base, cks, {"weight": 1.0}, parameters={"density": 0.5}),
            DirectorySink(tmp_path / "a"),
        )
        assert seen == [[]]
        torch.set_num_threads(1)  # one core's worth of threads: nothing to gain, no lanes planned
        run_merge(recipe("tsvm", base, cks), DirectorySink(tmp_path / "b"), device="cpu")
        assert seen == [[]]
    finally:
        torch.set_num_threads(before)


def test_lanes_only_where_the_budget_holds_them(two_threads, tmp_path, tiny_llama_family, monkeypatch):
    base, cks = tiny_llama_family
    plans = []
    real = budget.plan_lanes

    def spy(plan, spec):
        out = real(plan, spec)
        plans.append((plan, out, spec))
        return out

    monkeypatch.setattr(budget, "plan_lanes", spy)
    run_merge(recipe("iso_cts", base, cks), DirectorySink(tmp_path / "roomy"), device="cpu")
    before, after, spec = plans[-1]
    lane_tensors = [t for t in after.tensors if t.lane]
    assert lane_tensors
    needed = peak_estimate(before, spec) + lanes_extra(lane_tensors, spec)
    assert peak_estimate(after, spec) == needed  # the estimate counts what the lanes hold

    run_merge(recipe("iso_cts", base, cks), DirectorySink(tmp_path / "fits"), device="cpu", max_memory=needed)
    assert any(t.lane for t in plans[-1][1].tensors)
    run_merge(
        recipe("iso_cts", base, cks), DirectorySink(tmp_path / "tight"), device="cpu", max_memory=needed - 1
    )
    assert not any(t.lane for t in plans[-1][1].tensors)  # one tensor after the other, as before
    assert _files(tmp_path / "tight") == _files(tmp_path / "roomy")

    for _, planned, _ in plans:  # a tensor merged in row blocks is never on a lane
        assert not any(t.lane and t.block_rows is not None for t in planned.tensors)


def test_a_failing_lane_names_the_input_and_leaves_nothing(two_threads, tmp_path, tiny_llama_family, odd):
    base, cks = tiny_llama_family
    with pytest.raises(NonFiniteError, match=r"'.*nan'.*model\.layers\.1\.mlp\.up_proj\.weight"):
        run_merge(recipe("tsvm", base, [cks[0], odd["nan"]]), DirectorySink(tmp_path / "o"), device="cpu")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []
    assert _lane_threads() == []


def test_cancelling_stops_the_lanes_and_leaves_nothing(two_threads, tmp_path, tiny_llama_family, monkeypatch):
    base, cks = tiny_llama_family
    seen = _planned_lanes(monkeypatch)
    calls = []

    def cancel_after_a_few() -> bool:
        calls.append(1)
        return len(calls) > 8

    with pytest.raises(MergeCancelled):
        run_merge(
            recipe("iso_cts", base, cks),
            DirectorySink(tmp_path / "o"),
            should_cancel=cancel_after_a_few,
            device="cpu",
        )
    assert seen[0]
    assert list(tmp_path.iterdir()) == []
    assert _lane_threads() == []


def _unit(shape, n_inputs=2) -> ReadUnit:
    return ReadUnit(0, "w", 0, shape[0], shape, None, ((None, None),) * n_inputs, held=True)


def test_held_stacks_are_handed_out_and_given_back():
    pool = HeldStacks(2, 3 * 4 * 5, torch.device("cpu"))
    stop = threading.Event()
    a = pool.take(_unit((4, 5)), stop)
    b = pool.take(_unit((2, 5)), stop)
    assert a.shape == (3, 4, 5) and b.shape == (3, 2, 5)
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    waiting: list = []
    t = threading.Thread(target=lambda: waiting.append(pool.take(_unit((4, 5)), stop)))
    t.start()
    t.join(0.3)
    assert t.is_alive()  # both out: the reader waits
    pool.give(b)
    t.join(5)
    assert waiting[0].untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="not one of this pool"):
        pool.give(torch.empty(3))
    with pytest.raises(ValueError, match="does not fit"):
        pool.take(_unit((9, 5)), stop)
    stop.set()
    assert pool.take(_unit((4, 5)), stop) is None  # stopped while none is free


def test_tensor_lanes_run_each_job_as_a_lane_on_one_thread(two_threads):
    lanes = TensorLanes()
    try:
        futures = [lanes.submit(lambda: (torch.get_num_threads(), in_lane())) for _ in range(4)]
        assert [f.result(timeout=10) for f in futures] == [(1, True)] * 4
        assert not in_lane() and torch.get_num_threads() == 2
    finally:
        lanes.close()


def test_spectra_are_recorded_for_lane_tensors_in_plan_order(
    two_threads, tmp_path, tiny_llama_family, monkeypatch
):
    base, cks = tiny_llama_family
    seen = _planned_lanes(monkeypatch)
    on = run_merge(recipe("iso_c", base, cks), DirectorySink(tmp_path / "on"), device="cpu", spectra="all")
    assert seen[0]
    assert {s.tensor for s in on.stats.spectra} >= set(seen[0])
    monkeypatch.setattr(budget, "plan_lanes", lambda plan, spec: plan)
    off = run_merge(recipe("iso_c", base, cks), DirectorySink(tmp_path / "off"), device="cpu", spectra="all")
    assert repr(on.stats) == repr(off.stats)
    assert _files(tmp_path / "on") == _files(tmp_path / "off")


def test_small_tensors_behind_the_lanes_merge_at_once_and_go_out_in_order(
    two_threads, tmp_path, tiny_llama_family, monkeypatch
):
    """The norms between a layer's matrices (on the stored route here: the means of tsvm's vectors) merge
    while the lanes work, and are written and recorded in their turn: the same files and figures."""
    base, cks = tiny_llama_family
    deferred: list[bool] = []
    real = engine._merge_stored

    def spy(work, unit, stack, observer, model_refs, record=True):
        deferred.append(not record)
        return real(work, unit, stack, observer, model_refs, record)

    monkeypatch.setattr(engine, "_merge_stored", spy)
    on = run_merge(recipe("tsvm", base, cks), DirectorySink(tmp_path / "on"), device="cpu")
    assert any(deferred) and not all(deferred)  # the norms between matrices; the embeddings before any
    monkeypatch.setattr(budget, "plan_lanes", lambda plan, spec: plan)
    off = run_merge(recipe("tsvm", base, cks), DirectorySink(tmp_path / "off"), device="cpu")
    assert _files(tmp_path / "on") == _files(tmp_path / "off")
    assert repr(on.stats) == repr(off.stats)


def test_progress_comes_in_plan_order_with_lanes(two_threads, tmp_path, tiny_llama_family, monkeypatch):
    base, cks = tiny_llama_family
    lanes = _planned_lanes(monkeypatch)
    seen = []
    result = run_merge(
        recipe("iso_cts", base, cks), DirectorySink(tmp_path / "o"), device="cpu", on_progress=seen.append
    )
    assert lanes[0]
    assert [p.tensors_done for p in seen] == list(range(1, len(seen) + 1))
    assert all(a.bytes_done < b.bytes_done for a, b in zip(seen, seen[1:], strict=False))
    assert [p.tensor_name for p in seen] == [t.name for t in result.stats.tensors]  # the plan's order
    assert (seen[-1].tensors_done, seen[-1].bytes_done) == (seen[-1].tensors_total, seen[-1].bytes_total)
