"""A few leading eigenpairs of a symmetric matrix, without the whole eigendecomposition.

torch.linalg.eigh (LAPACK's divide-and-conquer syevd) always computes every eigenvector, and its
back-transformation to the original basis is about half its time. When a method keeps only a few leading
singular triplets (Iso-CTS's per-task residual directions, TSV-M's r/T per task), LAPACK's MRRR driver
syevr computes just those k eigenvectors and back-transforms k columns. torch does not expose syevr, so it
comes from scipy (its own OpenBLAS), imported the first time it pays, never before: the import costs
0.25-0.5 s of a process.

Measured (one thread, 1024 x 1024 Gram matrix, ratio to torch's full eigh, medians of 5, load 4.4-4.6):
float32 k = 52: 0.56, 128: 0.75, 256: 0.87, 341: 0.90; float64 k = 52: 0.51, 128: 0.67, 256: 0.94. Hence
the rule below; on a 256-wide matrix the call overheads eat the gain.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

# syevr is taken for k leading pairs of an n x n matrix when n is at least this...
MIN_SIDE = 512
# ...and k at most this share of n (past it the saving falls under about 10%).
MAX_SHARE = 0.25


def pays(n: int, k: int) -> bool:
    """Whether syevr's k leading pairs are worth it over the whole eigendecomposition (shape only, so the
    route, and with it the bytes, never depends on the machine)."""
    return n >= MIN_SIDE and 0 < k <= MAX_SHARE * n


def leading_eigh(gram: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest eigenvalues (descending) and their eigenvectors (columns) of the symmetric CPU
    float32/float64 matrix `gram`, read from its LOWER triangle only (as torch.linalg.eigh reads it). The
    matrix's storage is used as LAPACK's workspace: its contents are lost. Raises
    torch.linalg.LinAlgError when syevr fails to converge, as torch.linalg.eigh does."""
    n = gram.shape[-1]
    if gram.dim() != 2 or gram.shape[0] != n or not 0 < k <= n:
        raise ValueError(f"leading_eigh: need a square matrix and 0 < k <= n, got {tuple(gram.shape)}, k={k}")
    if gram.device.type != "cpu" or gram.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"leading_eigh: CPU float32/float64 only, got {gram.dtype} on {gram.device}")
    lapack = _lapack()
    syevr = lapack.ssyevr if gram.dtype == torch.float32 else lapack.dsyevr
    # LAPACK is column-major: the row-major lower triangle is the transposed view's upper triangle, and that
    # view is already column-major, so nothing is copied.
    a = gram.contiguous().numpy().T
    _one_blas_thread()
    w, z, found, _, info = syevr(a, compute_v=1, range="I", lower=0, il=n - k + 1, iu=n, overwrite_a=1)
    if info < 0:
        raise ValueError(f"syevr: argument {-info} is invalid")
    if info > 0 or found != k:
        raise torch.linalg.LinAlgError(f"syevr failed (info {info}, {found} of {k} eigenpairs)")
    return torch.from_numpy(w[:k]).flip(0), torch.from_numpy(z).flip(1)


_LAPACK = None
_BLAS: list = []  # threadpoolctl controllers of the BLAS that scipy's LAPACK calls
_LOCK = threading.Lock()


def _lapack():
    """scipy.linalg.lapack, imported on first use (by whichever lane gets there first)."""
    global _LAPACK
    if _LAPACK is None:
        with _LOCK:
            if _LAPACK is None:
                from scipy.linalg import lapack

                _BLAS[:] = _scipy_blas()
                _LAPACK = lapack
    return _LAPACK


def _scipy_blas() -> list:
    """The BLAS libraries scipy's LAPACK runs on: the OpenBLAS bundled with scipy (scipy.libs), else, where
    scipy shares a system BLAS, every BLAS loaded."""
    import scipy
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    bundled = str(Path(scipy.__file__).resolve().parent.parent / "scipy.libs")
    return [lib for lib in blas if str(Path(lib.filepath).resolve()).startswith(bundled)] or blas


def _one_blas_thread() -> None:
    """Hold scipy's BLAS at one thread. Each lane's op must run on its own thread, as torch's do
    (subspace.decomposition_threads): two lanes' syevr calls on two threads each fight over two cores, and
    a result must not depend on the thread count. OpenBLAS's count is process-wide, so it is set once and
    kept (scipy's other users in this process run on one thread too); checked before every call in case
    someone raised it since. threadpoolctl lets only one thread set OpenBLAS's count, so a lane that finds
    it wrong takes over that role first."""
    if all(lib.get_num_threads() == 1 for lib in _BLAS):
        return
    from threadpoolctl import OpenBLASController

    with _LOCK:
        OpenBLASController.clear_controlling_thread(force=True)
        for lib in _BLAS:
            lib.set_num_threads(1)
        OpenBLASController.clear_controlling_thread()
        wrong = [lib.filepath for lib in _BLAS if lib.get_num_threads() != 1]
    if wrong:
        raise RuntimeError(f"could not hold BLAS at one thread: {', '.join(wrong)}")
