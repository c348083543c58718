"""A few leading eigenpairs of a symmetric matrix, without the whole eigendecomposition.

torch.linalg.eigh (LAPACK's divide-and-conquer syevd) always computes every eigenvector, and its
back-transformation to the original basis is about half its time. When a method keeps only a few leading
singular triplets (Iso-CTS's per-task residual directions, TSV-M's r/T per task), LAPACK's MRRR driver
syevr computes just those k eigenvectors and back-transforms k columns. torch does not expose syevr; the
OpenBLAS that ships inside scipy's wheel (or numpy's) does, as LAPACKE_ssyevr/dsyevr, called here through
ctypes. Not through scipy.linalg.lapack: its wrappers hold the GIL for the whole call, so the second lane
(subspace.two_at_a_time) waited out every one of them (measured: a 0.10 s gap in another thread's ticks
during a 0.11 s call), and importing scipy.linalg costs 0.25-0.5 s of a process. ctypes releases the GIL.

Measured (one thread, 1024 x 1024 Gram matrix, ratio to torch's full eigh, medians of 5, load 4.4-4.6):
float32 k = 52: 0.56, 128: 0.75, 256: 0.87, 341: 0.90; float64 k = 52: 0.51, 128: 0.67, 256: 0.94. Hence
the rule below; on a 256-wide matrix the call overheads eat the gain.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from pathlib import Path

import torch

# syevr is taken for k leading pairs of an n x n matrix when n is at least this...
MIN_SIDE = 512
# ...and k at most this share of n (past it the saving falls under about 10%).
MAX_SHARE = 0.25

_COL_MAJOR = 102  # LAPACKE's matrix_layout for column-major storage


def pays(n: int, k: int) -> bool:
    """Whether syevr's k leading pairs are worth it over the whole eigendecomposition: by shape (so the
    route, and with it the bytes, never depends on the machine's load), where this process has syevr."""
    return n >= MIN_SIDE and 0 < k <= MAX_SHARE * n and _lapacke() is not None


def leading_eigh(gram: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest eigenvalues (descending) and their eigenvectors (columns) of the symmetric CPU
    float32/float64 matrix `gram`, read from its LOWER triangle only (as torch.linalg.eigh reads it). The
    matrix's storage is used as LAPACK's workspace: its contents are lost. Raises
    torch.linalg.LinAlgError when syevr fails, as torch.linalg.eigh does."""
    n = gram.shape[-1]
    if gram.dim() != 2 or gram.shape[0] != n or not 0 < k <= n:
        raise ValueError(f"leading_eigh: need a square matrix and 0 < k <= n, got {tuple(gram.shape)}, k={k}")
    if gram.device.type != "cpu" or gram.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"leading_eigh: CPU float32/float64 only, got {gram.dtype} on {gram.device}")
    lapacke = _lapacke()
    if lapacke is None:
        raise RuntimeError("leading_eigh: no LAPACKE syevr in this environment (scipy's or numpy's OpenBLAS)")
    a = gram.contiguous()
    w = torch.empty(n, dtype=a.dtype)
    z = torch.empty((k, n), dtype=a.dtype)  # row-major k x n = column-major n x k: the eigenvectors
    # LAPACK is column-major: the row-major lower triangle is the column-major upper one, nothing copied
    found, info = lapacke.syevr(a, w, z, n, k)
    if info < 0:
        raise ValueError(f"syevr: argument {-info} is invalid")
    if info > 0 or found != k:
        raise torch.linalg.LinAlgError(f"syevr failed (info {info}, {found} of {k} eigenpairs)")
    return w[:k].flip(0), z.flip(0).T


class _Lapacke:
    """LAPACKE_{s,d}syevr and the thread count of one OpenBLAS library, through ctypes (the GIL released
    during each call). `ints`: the library's LAPACK integer (int32, or int64 for numpy's ILP64 build)."""

    def __init__(self, path: Path, prefix: str, suffix: str, ints: type):
        lib = ctypes.CDLL(str(path))
        self.path, self.ints = path, ints
        self._fns = {}
        for dtype, letter, real in (
            (torch.float32, "s", ctypes.c_float),
            (torch.float64, "d", ctypes.c_double),
        ):
            fn = getattr(lib, f"{prefix}LAPACKE_{letter}syevr{suffix}")
            p = ctypes.c_void_p
            fn.argtypes = [
                ctypes.c_int,
                ctypes.c_char,
                ctypes.c_char,
                ctypes.c_char,
                ints,
                p,
                ints,
                real,
                real,
            ]
            fn.argtypes += [ints, ints, real, ctypes.POINTER(ints), p, p, ints, p]
            fn.restype = ints
            self._fns[dtype] = fn
        self._get_threads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
        self._set_threads = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
        self._set_threads.argtypes = [ctypes.c_int]

    def syevr(self, a: torch.Tensor, w: torch.Tensor, z: torch.Tensor, n: int, k: int) -> tuple[int, int]:
        """(eigenpairs found, info) for the k largest of the column-major upper triangle in `a`."""
        self.one_thread()
        found = self.ints(0)
        isuppz = torch.empty(2 * k, dtype=torch.int64 if self.ints is ctypes.c_int64 else torch.int32)
        info = self._fns[a.dtype](
            _COL_MAJOR, b"V", b"I", b"U", n, a.data_ptr(), n, 0.0, 0.0, n - k + 1, n, 0.0,
            ctypes.byref(found), w.data_ptr(), z.data_ptr(), n, isuppz.data_ptr(),
        )  # fmt: skip
        return found.value, info

    def one_thread(self) -> None:
        """This OpenBLAS on one thread (process-wide: its count is one global). Each lane's op must run on
        its own thread, as torch's do (subspace.decomposition_threads): two lanes' calls on two threads
        each fight over two cores, and a result must not depend on the thread count. Checked before every
        call in case someone raised it since."""
        if self._get_threads() != 1:
            self._set_threads(1)
            if self._get_threads() != 1:
                raise RuntimeError(f"could not hold {self.path.name} at one thread")


def _bundled_openblas(package: str, libs: str, pattern: str) -> Path | None:
    """The OpenBLAS a package's wheel bundles (in `libs` beside it), found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted((Path(spec.submodule_search_locations[0]).parent / libs).glob(pattern))
    return found[0] if found else None


# Where syevr comes from, first found first: scipy's OpenBLAS (its own thread count, which only scipy uses),
# then numpy's (64-bit LAPACK integers). None: this environment has neither, and the whole eigendecomposition
# is taken everywhere.
_CANDIDATES = (
    ("scipy", "scipy.libs", "libscipy_openblas-*", "scipy_", "", ctypes.c_int32),
    ("numpy", "numpy.libs", "libscipy_openblas64_*", "scipy_", "64_", ctypes.c_int64),
)
_FOUND: list[_Lapacke | None] = []
_LOCK = threading.Lock()


def _lapacke() -> _Lapacke | None:
    """The syevr this process uses, loaded on first use (by whichever lane gets there first)."""
    if not _FOUND:
        with _LOCK:
            if not _FOUND:
                _FOUND.append(_load())
    return _FOUND[0]


def _load() -> _Lapacke | None:
    for package, libs, pattern, prefix, suffix, ints in _CANDIDATES:
        path = _bundled_openblas(package, libs, pattern)
        if path is None:
            continue
        try:
            return _Lapacke(path, prefix, suffix, ints)
        except (OSError, AttributeError):  # not loadable here, or built without LAPACKE
            continue
    return None
