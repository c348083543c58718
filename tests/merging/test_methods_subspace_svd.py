"""The SVD behind the subspace methods: exact on well-conditioned input, and a working fallback when
LAPACK fails to converge (it did on Iso-CTS residuals of a 130M-parameter bf16 family)."""

import pytest
import torch

from merging.methods import subspace
from merging.methods.subspace import svd, svd_via_eigh


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 5, 3)])
def test_svd_via_eigh_reconstructs(shape):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vh = svd_via_eigh(a)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ vh, a)
    torch.testing.assert_close(s, torch.linalg.svdvals(a))
    eye = torch.eye(s.shape[-1], dtype=a.dtype).expand_as(u.mT @ u)
    torch.testing.assert_close(u.mT @ u, eye)


def test_svd_via_eigh_rank_deficient_gives_zero_directions():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    u, s, vh = svd_via_eigh(a)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(u @ torch.diag(s) @ vh, a)
    assert torch.count_nonzero(vh[1]) == 0


def test_svd_falls_back_when_lapack_fails(monkeypatch):
    a = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    calls = []

    def failing_lapack(x):
        calls.append(x.dtype)
        raise torch.linalg.LinAlgError("The algorithm failed to converge")

    monkeypatch.setattr(subspace, "_lapack_svd", failing_lapack)
    u, s, vh = svd(a)
    assert calls == [torch.float32, torch.float64]  # float32, then float64, then the Gram route
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    torch.testing.assert_close(u @ torch.diag(s) @ vh, a, rtol=1e-4, atol=1e-5)
