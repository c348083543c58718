"""Independent decompositions two at a time (subspace.two_at_a_time): the same bytes as one after the
other, at most two at once, one torch thread inside, the thread count restored however the jobs end."""

from __future__ import annotations

import threading

import pytest
import torch

from merging.methods import subspace
from merging.methods.base import ModelsFromTaskVectors, TensorInputs
from merging.methods.blocks import Block, TensorContext
from merging.methods.gathered import IsoCtsMerger, TsvmMerger
from merging.methods.subspace import iso_cts_delta, tsvm_delta, two_at_a_time
from tests.merging.helpers import exit_code_in_forked_child


def tvs(n_tasks, m, n, seed):
    return torch.randn(n_tasks, m, n, generator=torch.Generator().manual_seed(seed))


def sequential(fn):
    """fn() with torch on one thread: two_at_a_time then runs its jobs one after the other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(96, 64), (64, 96), (80, 80)])
@pytest.mark.parametrize("n_tasks", [3, 4, 5])
def test_two_lanes_give_the_sequential_bytes(two_threads, shape, n_tasks):
    tv = tvs(n_tasks, *shape, seed=n_tasks)
    assert torch.equal(tsvm_delta(tv), sequential(lambda: tsvm_delta(tv)))
    assert torch.equal(iso_cts_delta(tv, 0.8), sequential(lambda: iso_cts_delta(tv, 0.8)))


def _merger_delta(merger_cls, tv, params, blocks):
    """A gathered merger's Δ, the engine's way: every pass over `blocks` row blocks, then the merge."""
    n_tasks, m, n = tv.shape
    base = torch.zeros(m, n)
    ctx = TensorContext(
        "model.layers.0.mlp.up_proj.weight", (m, n), params, [{}] * n_tasks, n_tasks, 0, blocks
    )
    merger = merger_cls(ctx)
    cuts = [(i * m // blocks, (i + 1) * m // blocks) for i in range(blocks)]

    def block(a, b):
        sub_tv = tv[:, a:b]
        inputs = TensorInputs(
            ctx.name,
            base[a:b],
            ModelsFromTaskVectors(base[a:b], sub_tv),
            [{}] * n_tasks,
            params,
            None,
            sub_tv,
        )
        return Block(a, b, inputs, n)

    for p in range(merger.passes):
        for a, b in cuts:
            merger.observe(p, block(a, b))
    return torch.cat([merger.merge(block(a, b)) for a, b in cuts])


@pytest.mark.parametrize("merger_cls", [TsvmMerger, IsoCtsMerger])
def test_whole_tensor_in_two_lanes_matches_row_blocks(two_threads, merger_cls):
    """A whole tensor decomposes its tasks two at a time at pass 0; row blocks gather one task per pass."""
    tv = tvs(4, 72, 56, seed=9)
    params = {"lambda": 1.0, "common_space_fraction": 0.8}
    whole = _merger_delta(merger_cls, tv, params, blocks=1)
    assert torch.equal(whole, _merger_delta(merger_cls, tv, params, blocks=3))


def test_jobs_run_two_at_once_on_one_thread_each(two_threads):
    both = threading.Barrier(2, timeout=10)  # one job after the other would time out here
    running, most = [0], [0]
    lock = threading.Lock()

    def job(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if i < 2:
            both.wait()
        threads = torch.get_num_threads()
        with lock:
            running[0] -= 1
        return i, threads

    out = two_at_a_time(torch.zeros(64, 64), [lambda i=i: job(i) for i in range(5)])
    assert out == [(i, 1) for i in range(5)]
    assert most[0] == 2
    assert torch.get_num_threads() == 2


def test_one_after_the_other_where_the_matrix_keeps_its_threads(two_threads):
    large = torch.zeros(1).expand(8, subspace.SINGLE_THREAD_MAX_SIDE + 1)
    callers = []
    two_at_a_time(large, [lambda: callers.append(threading.get_ident()) for _ in range(3)])
    assert set(callers) == {threading.get_ident()}


def test_a_failing_job_raises_after_both_lanes_end_and_restores_the_threads(two_threads):
    finished = []

    def slow():
        threading.Event().wait(0.2)
        finished.append(torch.get_num_threads())

    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        two_at_a_time(torch.zeros(64, 64), [slow, boom, slow, slow])
    assert finished and set(finished) == {1}  # the worker's job ran on one thread to its end
    assert torch.get_num_threads() == 2


def test_a_lane_job_runs_its_own_jobs_in_order(two_threads):
    """No lanes inside a lane: a job's own two_at_a_time runs on the job's thread, one after the other."""
    inner_threads = []

    def outer():
        me = threading.get_ident()
        inner = two_at_a_time(torch.zeros(64, 64), [threading.get_ident, threading.get_ident])
        inner_threads.append(set(inner) == {me})
        return torch.get_num_threads()

    assert two_at_a_time(torch.zeros(64, 64), [outer, outer, outer]) == [1, 1, 1]
    assert inner_threads == [True, True, True]


def test_a_single_decomposition_shares_its_products_between_the_lanes(two_threads, monkeypatch):
    """Subspace Boosting's one decomposition per matrix (a section of its own): the Gram strips and the
    products around the eigh go two at a time, with the sequential bytes."""
    from merging.methods.boosting import boost

    both = threading.Barrier(2, timeout=10)  # the first two strips meet here: one after the other times out
    calls = []
    real = subspace._add_strip

    def spy(*args):
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            both.wait()
        return real(*args)

    monkeypatch.setattr(subspace, "_add_strip", spy)
    delta = tvs(1, 96, 64, seed=5)[0]
    got = boost(delta, 0.2, True)
    assert len(set(calls[:2])) == 2
    monkeypatch.setattr(subspace, "_add_strip", real)
    assert torch.equal(got, sequential(lambda: boost(delta, 0.2, True)))


def _lanes_in_child() -> None:
    torch.set_num_threads(2)
    both = threading.Barrier(2, timeout=10)
    two_at_a_time(torch.zeros(64, 64), [both.wait, both.wait])


def test_a_forked_child_gets_its_own_second_lane(two_threads):
    two_at_a_time(torch.zeros(64, 64), [threading.get_ident, threading.get_ident])  # the parent's worker runs
    assert exit_code_in_forked_child(_lanes_in_child) == 0


def test_a_fresh_worker_runs_its_first_job_on_one_thread(two_threads, monkeypatch):
    """A new worker thread's torch/MKL count is set lazily: its first products must already be one-thread."""
    import merging.threads as threads

    a = tvs(1, 2816, 1024, seed=11)[0]
    expected = sequential(lambda: subspace.top_triplets(a, 816))
    monkeypatch.setattr(threads, "_SECOND_LANE", None)  # the next job starts a fresh worker
    with subspace.decomposition_threads(a):
        got = subspace.top_triplets(a, 816)
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))


def test_tall_iso_cts_forms_the_first_task_grams_beside_the_common_decomposition(two_threads, monkeypatch):
    """On a tall matrix the second lane forms the first tasks' τᵀτ while this one decomposes the sum: both
    meet inside their jobs (one after the other would time out), and the bytes are the sequential ones."""
    tv = tvs(5, 96, 64, seed=13)
    expected = sequential(lambda: iso_cts_delta(tv, 0.8))
    both = threading.Barrier(2, timeout=10)
    met = []
    real_common = subspace.IsoCtsParts.common
    real_gram = subspace.lower_gram

    def common(self, total):
        met.append(("common", both.wait()))
        return real_common(self, total)

    def lower_gram(m, dtype, like, gram=None, alpha=1.0):
        if m.data_ptr() == tv[0].data_ptr() and gram is None and not any(n == "grams" for n, _ in met):
            met.append(("grams", both.wait()))  # the first task's τᵀτ, formed beside the common job
        return real_gram(m, dtype, like, gram, alpha)

    monkeypatch.setattr(subspace.IsoCtsParts, "common", common)
    monkeypatch.setattr(subspace, "lower_gram", lower_gram)
    got = iso_cts_delta(tv, 0.8)
    assert sorted(name for name, _ in met) == ["common", "grams"]
    assert torch.equal(got, expected)
