import math

import pytest
import torch

from merging.geometry import GeometryRecorder, effective_rank, wants_spectrum


def _record(spectra):
    """Two checkpoints, two tensors; task vectors chosen so every figure is computable by hand:
    w: τ1 = [[1, -1], [0, 2]], τ2 = [[1, 1], [0, -2]], Δ = [[1, 0], [0, 0]]
    v: τ1 = [2, 0], τ2 = [0, 0], Δ = [1, 0]
    """
    rec = GeometryRecorder(2, spectra)
    base_w = torch.ones(2, 2)
    t1, t2 = torch.tensor([[1.0, -1.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    w = rec.record("w", base_w, [base_w + t1, base_w + t2], base_w + torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    base_v = torch.zeros(2)
    v = rec.record("v", base_v, [torch.tensor([2.0, 0.0]), torch.zeros(2)], torch.tensor([1.0, 0.0]))
    return rec.finish(), w, v


def test_per_tensor_figures():
    _, w, v = _record(None)
    assert w.task_norms == pytest.approx([math.sqrt(6), math.sqrt(6)])
    assert w.cosines[0] == pytest.approx([1.0, -2 / 3]) and w.cosines[1] == pytest.approx([-2 / 3, 1.0])
    assert w.delta_norm == pytest.approx(1.0)
    # entries (0,1) and (1,1) have one positive and one negative τ; (1,0) is zero in both
    assert w.sign_conflict == 0.5
    assert (w.shape, w.numel) == ((2, 2), 4)
    assert v.task_norms == pytest.approx([2.0, 0.0])
    assert v.cosines == [[1.0, 0.0], [0.0, 0.0]]  # a zero task vector has cosine 0 with everything
    assert v.sign_conflict == 0.0


def test_whole_model_figures_accumulate_over_tensors():
    stats, _, _ = _record(None)
    assert stats.model_task_norms == pytest.approx([math.sqrt(10), math.sqrt(6)])
    assert stats.model_cosines[0][1] == pytest.approx(-4 / math.sqrt(60))
    assert stats.model_delta_norm == pytest.approx(math.sqrt(2))
    summary = stats.summary()
    assert summary["sign_conflict"] == pytest.approx((0.5 * 4 + 0 * 2) / 6)
    assert summary["mean_cosine"] == pytest.approx(-4 / math.sqrt(60))
    assert all(isinstance(x, float) for x in summary["model_task_norms"])
    rows = stats.to_rows()
    assert rows["tensors"][0]["name"] == "w" and rows["tensors"][0]["shape"] == [2, 2]


def test_spectra_only_for_chosen_matrices():
    stats, _, _ = _record(["w"])
    assert [(s.tensor, s.source, s.index) for s in stats.spectra] == [
        ("w", "task", 0),
        ("w", "task", 1),
        ("w", "delta", -1),
    ]
    # τ1ᵀτ1 = [[1, -1], [-1, 5]] has eigenvalues 3 ± √5
    s = [math.sqrt(3 + math.sqrt(5)), math.sqrt(3 - math.sqrt(5))]
    assert stats.spectra[0].singular_values == pytest.approx(s, rel=1e-5)
    p = [x / sum(s) for x in s]
    assert stats.spectra[0].effective_rank == pytest.approx(
        math.exp(-sum(q * math.log(q) for q in p)), rel=1e-5
    )
    assert stats.spectra[2].singular_values == pytest.approx([1.0, 0.0], abs=1e-6)
    assert stats.spectra[2].effective_rank == pytest.approx(1.0)
    assert len(_record("all")[0].spectra) == 3  # v is a vector: never a spectrum
    assert _record(None)[0].spectra == []


def test_effective_rank_and_selection():
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    )
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0])) == pytest.approx(3.0)
    assert effective_rank(torch.zeros(3)) == 0.0
    assert wants_spectrum("model.layers.0.mlp.up_proj.weight", 2, ["*.mlp.*"])
    assert not wants_spectrum("model.layers.0.mlp.up_proj.weight", 2, ["*.self_attn.*"])
    assert not wants_spectrum("model.norm.weight", 1, "all")


def test_what_the_update_kept_of_the_task_vectors():
    stats, w, v = _record(None)
    # ⟨Δ, τ_i⟩: w: Δ = e00 picks τ1[0,0] = 1 and τ2[0,0] = 1; v: Δ = [1, 0] picks τ1 = [2, 0] -> 2, τ2 -> 0
    assert w.task_dots == pytest.approx([1.0, 1.0]) and v.task_dots == pytest.approx([2.0, 0.0])
    assert stats.model_task_dots == pytest.approx([3.0, 1.0])
    # L1 mass of w: 4 + 4; Δ is 0 at (0,1), (1,0), (1,1) which carry 1+1, 0, 2+2 of it
    assert (w.task_l1, w.dropped_l1) == (8.0, 6.0)
    assert (v.task_l1, v.dropped_l1) == (2.0, 0.0)  # the entry Δ left alone carries no mass
    # both conflicting entries of w were left at the base
    assert (w.conflict_dropped, w.conflict_summed) == (1.0, 0.0)
    summary = stats.summary()
    assert summary["mass_dropped"] == pytest.approx(6 / 10)
    assert summary["model_task_dots"] == pytest.approx([3.0, 1.0])
    assert (summary["conflict_dropped"], summary["conflict_summed"]) == (1.0, 0.0)
    assert stats.to_rows()["tensors"][0]["task_dots"] == pytest.approx([1.0, 1.0])


def test_conflicts_resolved_with_or_against_the_summed_sign():
    rec = GeometryRecorder(2)
    base = torch.zeros(3)
    # τ1 = [3, -1, 1], τ2 = [-1, 2, 1]: entries 0 and 1 conflict, Σ τ = [2, 1, 2]
    u = rec.record(
        "u",
        base,
        [torch.tensor([3.0, -1.0, 1.0]), torch.tensor([-1.0, 2.0, 1.0])],
        torch.tensor([2.0, -0.5, 0.0]),
    )
    assert u.sign_conflict == pytest.approx(2 / 3)
    # entry 0: Δ > 0 with Σ > 0 (summed side); entry 1: Δ < 0 against Σ > 0; nothing dropped among them
    assert (u.conflict_dropped, u.conflict_summed) == (0.0, 0.5)
    assert (u.task_l1, u.dropped_l1) == (9.0, 2.0)  # entry 2 (|1| + |1|) was left at the base
    assert u.task_dots == pytest.approx([6.5, -3.0])
    summary = rec.finish().summary()
    assert summary["mass_dropped"] == pytest.approx(2 / 9)
    assert summary["conflict_summed"] == pytest.approx(0.5)


def test_one_checkpoint_has_no_conflicts_but_still_its_mass():
    rec = GeometryRecorder(1)
    t = rec.record("x", torch.zeros(2), torch.tensor([[1.0, -2.0]]), torch.tensor([0.0, -2.0]))
    assert (t.sign_conflict, t.conflict_dropped, t.conflict_summed) == (0.0, 0.0, 0.0)
    assert (t.task_l1, t.dropped_l1) == (3.0, 1.0)
    assert rec.finish().summary()["conflict_dropped"] is None  # no conflicts: no rate to report
