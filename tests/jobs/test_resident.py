"""Resident models: no copy of the base kept, the base restored from its files, a memory budget per device."""

import shutil

import pytest
import torch

from evaluation import EvaluationError, ResidentModel, load_model
from jobs.errors import JobError
from jobs.resident import BUDGET_ENV, ResidentBudgetError, ResidentPool, estimated_resident_bytes
from tests.tiny_models import make_base


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _tensors_held_outside_model(resident) -> int:
    """Bytes of tensors the resident object holds besides its model (a CPU copy of the base would be here)."""
    total = 0
    for name, value in vars(resident).items():
        if name == "model":
            continue
        items = value.values() if isinstance(value, dict) else [value]
        total += sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))
    return total


@pytest.mark.parametrize("tie", [False, True])
def test_restore_base_reads_the_files_back_exactly(tmp_path, tie):
    base = make_base(tmp_path / "base", tie=tie)
    resident = ResidentModel(base, device="cpu")
    assert _tensors_held_outside_model(resident) == 0
    expected = _state(load_model(base, device="cpu").model)
    with torch.no_grad():  # what a merge (or a merge refused half-way) does to the resident
        for p in resident.model.parameters():
            p.mul_(-3.0).add_(1.0)
    resident.fingerprint = "merge-x"
    resident.restore_base()
    restored = _state(resident.model)
    assert restored.keys() == expected.keys()
    assert all(torch.equal(restored[k], expected[k]) for k in expected)
    assert resident.fingerprint == resident.base_fingerprint


def test_restore_refuses_a_base_changed_on_disk(tmp_path):
    base = make_base(tmp_path / "base")
    resident = ResidentModel(base, device="cpu")
    shutil.rmtree(base)
    make_base(base, seed=7)  # same shapes, other weights
    with pytest.raises(EvaluationError, match="changed on disk"):
        resident.restore_base()
    assert resident.fingerprint is None  # nothing is scored under the base's name after this


def test_resident_size_matches_its_estimate(tmp_path):
    base = make_base(tmp_path / "base")
    resident = ResidentModel(base, device="cpu")
    estimate = estimated_resident_bytes(str(base), "cpu")
    # the estimate counts the stored weights; the model adds only small non-persistent buffers (rotary)
    assert 0 < estimate <= resident.nbytes < 1.01 * estimate


def test_pool_keeps_residents_within_the_budget(tmp_path, monkeypatch):
    a, b = make_base(tmp_path / "a", seed=1), make_base(tmp_path / "b", seed=2)
    one = estimated_resident_bytes(str(a), "cpu")
    monkeypatch.setenv(BUDGET_ENV, str(1.5 * one / 1024**3))  # room for one resident, not two
    pool = ResidentPool(capacity=4)
    with pool.use(str(a), "cpu") as first:
        assert first.ref == str(a)
        # a holds the only room and is in use: b is refused with a clear message, nothing evicted
        with (
            pytest.raises(ResidentBudgetError, match=f"resident budget.*{BUDGET_ENV}"),
            pool.use(str(b), "cpu"),
        ):
            pass
        assert pool.loaded() == [(str(a), "cpu")]
    with pool.use(str(b), "cpu") as second:  # a is idle now: dropped to make room (LRU)
        assert second.ref == str(b)
    assert pool.loaded() == [(str(b), "cpu")] and pool.held_bytes("cpu") == second.nbytes


def test_pool_reuses_a_resident_and_evicts_the_least_recently_used(tmp_path, monkeypatch):
    bases = [str(make_base(tmp_path / f"m{i}", seed=i)) for i in range(3)]
    one = estimated_resident_bytes(bases[0], "cpu")
    monkeypatch.setenv(BUDGET_ENV, str(2.5 * one / 1024**3))
    pool = ResidentPool(capacity=4)
    with pool.use(bases[0], "cpu") as m0:
        pass
    with pool.use(bases[1], "cpu"):
        pass
    with pool.use(bases[0], "cpu") as again:  # reused, and now the most recently used
        assert again is m0
    with pool.use(bases[2], "cpu"):
        pass
    assert sorted(k[0] for k in pool.loaded()) == sorted([bases[0], bases[2]])


def test_bad_budget_setting_is_one_clear_error(tmp_path, monkeypatch):
    base = make_base(tmp_path / "base")
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with (
        pytest.raises(JobError, match=f"{BUDGET_ENV} must be a number of GiB"),
        ResidentPool().use(str(base), "cpu"),
    ):
        pass


def test_workers_sharing_a_device_split_the_budget(tmp_path, monkeypatch):
    base = str(make_base(tmp_path / "base"))
    one = estimated_resident_bytes(base, "cpu")
    monkeypatch.setenv(BUDGET_ENV, str(1.5 * one / 1024**3))  # one resident fits the whole budget...
    with ResidentPool().use(base, "cpu"):
        pass
    # ...but not half of it, which is what each of two CPU workers gets
    with pytest.raises(ResidentBudgetError, match="needs"), ResidentPool(budget_share=0.5).use(base, "cpu"):
        pass


@pytest.mark.gpu
def test_resident_on_a_gpu_is_bfloat16_and_restores_exactly(tmp_path):
    base = make_base(tmp_path / "base")
    resident = ResidentModel(base, device="cuda")
    assert {p.dtype for p in resident.model.parameters()} == {torch.bfloat16}
    estimate = estimated_resident_bytes(str(base), "cuda")
    assert estimate <= resident.nbytes < 1.01 * estimate
    expected = _state(load_model(base, device="cuda").model)
    with torch.no_grad():
        for p in resident.model.parameters():
            p.mul_(-3.0)
    resident.restore_base()
    assert all(torch.equal(v, expected[k]) for k, v in _state(resident.model).items())
