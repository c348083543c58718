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
