"""Subspace methods of methods.md §3: TSV-M, Iso-C, Iso-CTS (per matrix, float32 results).

Embedding/LM-head tensors and every non-matrix tensor get the plain mean of the task vectors, as in the
paper's mergekit fork. Weights are not used (the fork ignores them); `lambda` scales the update.

The decompositions take the cheaper exact route where it is safe: the eigendecomposition of the smaller
Gram matrix (float32 where it is well conditioned, else float64; a fraction of an SVD's time), which gives
the polar factor, the singular values and the leading triplets to float32 accuracy or better while the
matrix is not close to rank-deficient; there, where the result depends on which null-space basis LAPACK
picks, they fall back to the SVD.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from contextlib import contextmanager
from typing import TypeVar

import torch

from merging.methods.base import ParamSpec, TensorInputs
from merging.methods.leading_eigh import leading_eigh
from merging.methods.leading_eigh import pays as leading_pays
from merging.methods.task_vectors import weighted_sum
from merging.threads import in_lane, on_second_lane, own_lane

SKIP_NAMES = ("embed_tokens", "lm_head")

LAMBDA = ParamSpec(
    "lambda",
    "float",
    1.0,
    per_model=False,
    paper_value=1.0,
    help="scale of the merged update: θ = θ0 + λ·Δ",
)
COMMON_SPACE_FRACTION = ParamSpec(
    "common_space_fraction",
    "float",
    0.8,
    per_model=False,
    minimum=0.0,
    maximum=1.0,
    help="share of the rank given to the common subspace of the summed task vectors",
)


def uses_svd(name: str, t: torch.Tensor) -> bool:
    """Only 2-D tensors outside the embeddings/LM head take the SVD path."""
    return t.dim() == 2 and not any(s in name for s in SKIP_NAMES)


# The linear algebra of a matrix up to this size (smaller side) runs on one CPU thread: LAPACK's reductions
# synchronise the threads once per column, torch's small ops once per call, and when another process holds
# a core each of those barriers waits for the scheduler. Measured on 2 shared cores under load: eigh of
# 1024 x 1024, 0.16 s on one thread against 0.9-1.2 s on two; TSV-M of four 256 x 1024 task vectors,
# 0.04-0.08 s against 0.47-0.66 s. Larger matrices keep torch's thread count, where the parallel work
# outweighs the barriers on an otherwise idle machine. The rule depends on the shape alone, never on the
# machine's load: LAPACK's eigh differs in the last bits between one and two threads, and a merge's bytes
# (its fingerprint) must not depend on what else ran at the time.
SINGLE_THREAD_MAX_SIDE = 2048


# Per thread: whether the decomposition section it is in may use the second lane (torch had more than one
# thread when the section began). Whether it runs a lane's job (no lanes inside a lane): threads.in_lane.
_SECTION = threading.local()


@contextmanager
def decomposition_threads(a: torch.Tensor):
    """One torch thread while working on `a` when it is a small CPU matrix (see above); nests."""
    threads = torch.get_num_threads()
    if a.device.type != "cpu" or threads == 1 or min(a.shape[-2:]) > SINGLE_THREAD_MAX_SIDE:
        yield
        return
    torch.set_num_threads(1)
    outer, _SECTION.lanes = getattr(_SECTION, "lanes", False), True
    try:
        yield
    finally:
        _SECTION.lanes = outer
        torch.set_num_threads(threads)


def single_threaded(fn):
    """Decorator: run `fn` under decomposition_threads of its first tensor argument."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        a = next(x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor))
        with decomposition_threads(a):
            return fn(*args, **kwargs)

    return run


# Independent decompositions of one matrix (TSV-M's and Iso-CTS's per-task ones, the two polar factors), and
# the halves of the products around them, run two at a time, on the caller's thread and the engine's second
# lane (merging/threads.py), where each would run on one thread anyway (decomposition_threads): each op is
# then still single-threaded, so the bytes are those of the sequential order, and the second core works
# instead of idling. Torch thread counts are per thread: the lane sets its own to one for each job.
Result = TypeVar("Result")


def two_at_a_time(a: torch.Tensor, jobs: Sequence[Callable[[], Result]]) -> list[Result]:
    """The results of the independent `jobs`, in order, computed two at a time when `a` is a matrix that
    decomposition_threads puts on one thread and torch has more than one (or had, when the section this
    runs in began), unless this already runs in a lane; else one after the other, under
    decomposition_threads of `a`. Shape-only: the same jobs give the same bytes either way. At most two
    jobs run at once, so at most two jobs' temporaries exist at once."""
    lanes = len(jobs) > 1 and second_lane_free(a)
    with decomposition_threads(a):
        return _in_two_lanes(jobs) if lanes else [job() for job in jobs]


def second_lane_free(a: torch.Tensor) -> bool:
    """Whether two_at_a_time may use the second lane for `a` here: a small CPU matrix, torch on more than
    one thread (or it was when this thread's decomposition section began), not already inside a lane."""
    return (
        a.device.type == "cpu"
        and min(a.shape[-2:]) <= SINGLE_THREAD_MAX_SIDE
        and not in_lane()
        and (torch.get_num_threads() > 1 or getattr(_SECTION, "lanes", False))
    )


def _in_two_lanes(jobs: Sequence[Callable[[], Result]]) -> list[Result]:
    results: list = [None] * len(jobs)
    order = iter(range(len(jobs)))
    take = threading.Lock()
    failed = threading.Event()

    def lane() -> None:  # one torch thread: decomposition_threads here, on_second_lane on the worker
        with own_lane():
            while not failed.is_set():
                with take:
                    i = next(order, None)
                if i is None:
                    return
                try:
                    results[i] = jobs[i]()
                except BaseException:
                    failed.set()
                    raise

    other = on_second_lane(lane)
    try:
        lane()
    finally:
        wait([other])  # the worker's job ends before the caller restores the thread count
    other.result()  # its failure, if any
    return results


def matmul_in_halves(a: torch.Tensor, b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """a @ b, a's rows in two halves (always two: the bytes do not depend on the lanes), two at a time
    where two_at_a_time allows it for `like`, the matrix being decomposed."""
    rows = a.shape[0]
    out = torch.empty((rows, b.shape[1]), dtype=torch.result_type(a, b), device=a.device)
    half = -(-rows // 2)

    def rows_of(lo: int, hi: int) -> None:
        torch.mm(a[lo:hi], b, out=out[lo:hi])

    two_at_a_time(like, [functools.partial(rows_of, 0, half), functools.partial(rows_of, half, rows)])
    return out


def _add_strip(gram: torch.Tensor, mb: torch.Tensor, j: int, strip: int, alpha: float = 1.0) -> None:
    """gram[j:, j:j+strip] += α mb[:, j:]ᵀ mb[:, j:j+strip]: one strip of the Gram matrix's lower triangle."""
    gram[j:, j : j + strip].addmm_(mb[:, j:].mT, mb[:, j : j + strip], alpha=alpha)


def lower_gram(
    m: torch.Tensor,
    dtype: torch.dtype,
    like: torch.Tensor,
    gram: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """gram + α mᵀm (gram: zeros when not given), its lower triangle only (eigh reads no other), m's rows
    converted to `dtype` GRAM_BLOCK_BYTES at a time, the strips two at a time where two_at_a_time allows
    it for `like`, the matrix being decomposed."""
    cols = m.shape[1]
    gram = torch.zeros((cols, cols), dtype=dtype, device=m.device) if gram is None else gram
    block = max(1, GRAM_BLOCK_BYTES // (dtype.itemsize * cols))
    strip = -(-cols // GRAM_STRIPS)
    for start in range(0, m.shape[0], block):
        mb = m[start : start + block].to(dtype)
        two_at_a_time(
            like, [functools.partial(_add_strip, gram, mb, j, strip, alpha) for j in range(0, cols, strip)]
        )
    return gram


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float32 (batched over leading dims); U, S, Vh with S descending.

    LAPACK's divide-and-conquer SVD (and CUDA's default driver) can fail to converge on ill-conditioned
    task vectors, e.g. Iso-CTS residuals whose tail singular values all but vanish. Like the paper's fork,
    retry: CUDA's robust gesvd driver, then float64, then an eigendecomposition of the smaller Gram
    matrix, which always converges (its tiny singular values are less accurate, which no method here
    relies on).
    """
    a = a.float()
    with decomposition_threads(a):
        return _robust_svd(a)


def _robust_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        return _lapack_svd(a)
    except torch.linalg.LinAlgError:
        pass
    if a.device.type == "cuda":
        try:
            return torch.linalg.svd(a, full_matrices=False, driver="gesvd")
        except torch.linalg.LinAlgError:
            pass
    wide = a.double()
    try:
        u, s, vh = _lapack_svd(wide)
    except torch.linalg.LinAlgError:
        u, s, vh = svd_via_eigh(wide)
    return u.float(), s.float(), vh.float()


def _lapack_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if a.device.type == "cpu" and a.shape[-2] < a.shape[-1]:
        # LAPACK wants column-major input: a wide row-major matrix's transpose is one already, which
        # skips a copy and halves the time (768×3072: 1.1 s → 0.57 s on one core). A = (Aᵀ)ᵀ = V S Uᵀ.
        ut, s, vht = torch.linalg.svd(a.mT, full_matrices=False)
        return vht.mT, s, ut.mT
    return torch.linalg.svd(a, full_matrices=False)


def svd_via_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD from the eigendecomposition of the smaller Gram matrix (A Aᵀ or Aᵀ A). Directions whose
    singular value is numerically zero come back as zero vectors."""
    tall = a.shape[-2] > a.shape[-1]
    m = a.mT if tall else a  # (…, k, n) with k = min(rows, cols)
    w, q = torch.linalg.eigh(m @ m.mT)  # ascending eigenvalues
    w, q = w.flip(-1), q.flip(-1)
    s = w.clamp_min(0).sqrt()
    inv = torch.where(s > s[..., :1] * 1e-12, 1 / s, torch.zeros_like(s))
    other = (q.mT @ m) * inv.unsqueeze(-1)  # rows: right singular vectors of m
    if tall:  # A = mᵀ = otherᵀ S qᵀ
        return other.mT, s, q.mT
    return q, s, other


# The Gram route squares the condition number κ = √(λ_1/λ_k) over the singular values it must give, so
# it is taken in a precision only while λ_k > rcond·λ_1 there; below float64's bound, the SVD. float64:
# error about 1e-16·κ², under 1e-6 for κ < 1e5. float32 (half float64's time): for all singular values
# (the polar factor, boosting: smooth functions of the spectrum) error about 6e-8·κ², ≲ 1e-5 for κ < 10;
# for leading triplets the vectors' error at the cut grows as 1/gap like the float32 SVD's own, and by κ/2
# more through the Gram matrix, so κ < 3.2 keeps it within 1.6x the SVD's.
F64_RCOND = 1e-10
F32_RCOND_ALL = 1e-2
F32_RCOND_LEADING = 1e-1

# Rows of the tall side converted at a time: the Gram route's temporaries stay this size instead of two
# float64 copies of the matrix (at 8B shapes, 14336 × 4096, that is 32 MiB against 940 MiB).
GRAM_BLOCK_BYTES = 32 << 20

# Column strips of the Gram matrix formed: only its lower triangle (eigh, UPLO="L", reads no other), 10/16
# of the full product's work in 4 strips (measured, one thread: 2816×1024 float32 49 → 38 ms, 1024×1024
# float64 32 → 24 ms; each entry the same dot product, the eigenpairs bit-equal to the full product's here).
GRAM_STRIPS = 4


class GramEigh:
    """The eigenpairs of a matrix's smaller Gram matrix, descending, in `dtype`. With m = A or Aᵀ, whichever
    is tall: mᵀm = Q diag(λ) Qᵀ, so A's singular values are √λ and m's right singular vectors are Q.
    A must be 2-D; it is read in row blocks of m, converted to `dtype` one block at a time. With `leading`
    = k, only the k leading pairs are computed where that pays (leading_eigh.py; `partial` then), which
    serves top() and resolves() up to k, not apply()."""

    def __init__(
        self,
        a: torch.Tensor,
        dtype: torch.dtype = torch.float64,
        left: bool = False,
        leading: int | None = None,
    ):
        self.a = a
        self.wide = a.shape[-2] < a.shape[-1] or (left and a.shape[-2] == a.shape[-1])  # Q: A's left vectors
        self.m = a.mT if self.wide else a
        cols = self.m.shape[1]
        self.block = max(1, GRAM_BLOCK_BYTES // (dtype.itemsize * cols))
        gram = lower_gram(self.m, dtype, a)
        self.rank = cols
        self.partial = leading is not None and _leading_pays(a, leading)
        with decomposition_threads(gram):
            if self.partial:
                lam, q = leading_eigh(gram, leading)  # descending; consumes gram
            else:
                lam, q = torch.linalg.eigh(gram)  # ascending; raises LinAlgError if it fails to converge
                lam, q = lam.flip(-1), q.flip(-1)
        self.lam = lam.clamp_min(0)
        self.q = q

    @classmethod
    def of(
        cls, a: torch.Tensor, k: int | None = None, left: bool = False, only_leading: bool = False
    ) -> GramEigh | None:
        """The decomposition that resolves A's k leading singular values (None: all of them): float32 when
        its Gram matrix is well conditioned over them, else float64; None when neither resolves them or
        LAPACK does not converge (callers then take the SVD). `left`: a square A's Gram matrix is A Aᵀ.
        `only_leading`: the caller needs the k leading pairs and nothing else (top())."""
        r = min(a.shape)
        k = r if k is None else k
        if not 0 < k <= r:
            return None
        for dtype in (torch.float32, torch.float64):
            if dtype.itemsize < a.dtype.itemsize or (dtype == torch.float32 and not _float32_first(a, k)):
                continue
            try:
                g = cls(a, dtype, left, leading=k if only_leading and k < r else None)
            except torch.linalg.LinAlgError:
                continue
            if g.resolves(k):
                return g
        return None

    def resolves(self, k: int) -> bool:
        """True when λ_k > rcond·λ_1 (this precision's, above): the k leading singular values, their
        vectors and (for k = all) the polar factor come out to float32 accuracy."""
        if self.lam.dtype == torch.float64:
            rcond = F64_RCOND
        else:
            rcond = F32_RCOND_LEADING if k < self.rank else F32_RCOND_ALL
        return 0 < k <= self.lam.shape[0] and bool(self.lam[k - 1] > self.lam[0] * rcond)

    def _times(self, x: torch.Tensor) -> torch.Tensor:
        """m · x, formed in this precision one row block at a time (at least two, two at a time), as A's
        dtype."""
        return self._by_rows(x.shape[1], lambda rows: rows.to(x.dtype) @ x)

    def _by_rows(self, width: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """fn(row block of m) for every row block (at least two, two at a time), stacked, as A's dtype."""
        rows = self.m.shape[0]
        out = torch.empty((rows, width), dtype=self.a.dtype, device=self.a.device)
        step = min(self.block, max(1, -(-rows // 2)))

        def rows_of(start: int) -> None:
            out[start : start + step] = fn(self.m[start : start + step])

        two_at_a_time(self.a, [functools.partial(rows_of, start) for start in range(0, rows, step)])
        return out

    def _whole(self, what: str) -> None:
        if self.partial:
            raise ValueError(
                f"GramEigh.{what} needs every eigenpair; this one has the {len(self.lam)} leading"
            )

    def singular_values(self) -> torch.Tensor:
        self._whole("singular_values")
        return self.lam.sqrt().to(self.a.dtype)

    def apply(self, f: torch.Tensor) -> torch.Tensor:
        """A · V diag(f) Vᵀ (V: A's right singular vectors; f per singular value, as λ), in A's dtype.

        A float64 decomposition of a float32 A is applied in float32 over the directions float32 resolves
        (λ > F32_RCOND_ALL·λ_1: the float32 Gram route's own bound, where f ≤ 10× its largest value for
        the polar factor) and in float64 over the rest: (m Q_hi) f Q_hiᵀ + (m Q_lo) f Q_loᵀ. On a square
        matrix with a random one's spectrum a tenth of the directions is below the cut, and the products
        take about half the time of the float64 ones (2 n³ float64 multiply-adds: m·(Q f Qᵀ))."""
        self._whole("apply")
        hi = int((self.lam > self.lam[0] * F32_RCOND_ALL).sum()) if self.lam.dtype != self.a.dtype else 0
        if hi == 0:
            out = self._times(matmul_in_halves(self.q * f, self.q.T, self.a))
        else:
            q_hi, q_lo = self.q[:, :hi].to(self.a.dtype), self.q[:, hi:]
            fq_hi = (self.q[:, :hi] * f[:hi]).T.to(self.a.dtype).contiguous()
            fq_lo = (q_lo * f[hi:]).T.contiguous()

            def rows(mb: torch.Tensor) -> torch.Tensor:
                out = (mb @ q_hi) @ fq_hi
                return out.add_((mb.to(q_lo.dtype) @ q_lo) @ fq_lo)

            out = self._by_rows(self.m.shape[1], rows)
        return out.T.contiguous() if self.wide else out

    def top(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The k leading triplets (U_k, s_k, V_k) of A, in A's dtype; needs resolves(k)."""
        s = self.lam[:k].sqrt()
        q = self.q[:, :k]
        x = self._times(q / s)  # m's left singular vectors
        q = q.to(self.a.dtype)
        u, v = (q, x) if self.wide else (x, q)
        return u, s.to(self.a.dtype), v


def _leading_pays(a: torch.Tensor, k: int) -> bool:
    """Whether k leading pairs of A's Gram matrix come cheaper alone (leading_eigh.py): on the CPU, in the
    one-thread regime (decomposition_threads), for few enough of them. Shape only."""
    return (
        a.device.type == "cpu"
        and min(a.shape[-2:]) <= SINGLE_THREAD_MAX_SIDE
        and leading_pays(min(a.shape), k)
    )


def _float32_first(a: torch.Tensor, k: int) -> bool:
    """Whether float32 is worth a try: up to half the leading values, or any of a clearly tall matrix. A
    square-ish matrix's smallest singular values reach down towards zero (a random n×n one's to about
    σ_1/n, its 0.6·n-th already below σ_1/3, float32's cut for leading values), so past half its rank
    (Iso-CTS's common subspace, 0.8·r; all of them) it goes straight to float64 instead of forming a
    float32 Gram matrix that would not resolve them."""
    r = min(a.shape)
    return 2 * k <= r or max(a.shape) >= 2 * r


def polar_and_singular_values(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P Qᵀ, s) for A = P diag(s) Qᵀ; through the Gram matrix unless A is (close to) rank-deficient."""
    g = GramEigh.of(a)
    if g is not None:
        return g.apply(g.lam.rsqrt()), g.singular_values()
    p, s, qh = svd(a)
    return p @ qh, s


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor P Qᵀ of A = P D Qᵀ: the nearest matrix with orthonormal columns."""
    return polar_and_singular_values(a)[0]


def polar_beside_orthonormal(vc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """polar([V_c, W]) where V_c (n × c) has orthonormal columns to float32 accuracy and W (n × e) is
    narrower: Iso-CTS's right factor, the common directions beside the tasks' own.

    With V_c exactly orthonormal and V_cᵀW = QR (Q: c × e), the Gram matrix [[I, QR], [RᵀQᵀ, WᵀW]] is the
    identity off the span of [[Q, 0], [0, I]] and [[I, R], [Rᵀ, WᵀW]] on it, so only that 2e × 2e block
    is eigendecomposed (float64; at e = 0.2·r, a tenth of the work of the whole one). V_c is first made
    orthonormal to float64 accuracy by a Cholesky QR (the same span, each column moved by its float32
    error), since the block's inverse square root amplifies any V_cᵀV_c − I by up to κ². Where this saves
    nothing (a tall [V_c, W], which the float32 Gram route decides; e ≥ c) or the block does not resolve
    (κ² past float64's bound), it is polar([V_c, W])."""
    n, c, e = vc.shape[0], vc.shape[1], w.shape[1]
    if not 0 < e < c or max(n, c + e) >= 2 * min(n, c + e):  # tall: float32 Gram route (_float32_first)
        return polar(torch.cat([vc, w], dim=1))
    vd, wd = vc.double(), w.double()
    try:
        r_c = torch.linalg.cholesky(vd.T @ vd, upper=True)
    except torch.linalg.LinAlgError:
        return polar(torch.cat([vc, w], dim=1))
    vd = torch.linalg.solve_triangular(r_c, vd, upper=True, left=False)  # V_c R⁻¹: V_cᵀV_c = I
    q, r = torch.linalg.qr(vd.T @ wd)
    eye = torch.eye(e, dtype=vd.dtype, device=vd.device)
    block = torch.cat([torch.cat([eye, r], dim=1), torch.cat([r.T, wd.T @ wd], dim=1)])
    try:
        lam, z = torch.linalg.eigh(block)
    except torch.linalg.LinAlgError:
        return polar(torch.cat([vc, w], dim=1))
    if not bool(lam[0] > max(float(lam[-1]), 1.0) * F64_RCOND):
        return polar(torch.cat([vc, w], dim=1))
    # G^(-1/2) = I + B (M − I) Bᵀ with B = [[Q, 0], [0, I]], M the block's inverse square root
    m_minus_eye = (z * lam.rsqrt()) @ z.T
    m_minus_eye.diagonal().sub_(1.0)
    y = torch.cat([vd @ q, wd], dim=1) @ m_minus_eye
    out = torch.cat([vd.addmm_(y[:, :e], q.T), wd.add_(y[:, e:])], dim=1)
    return out.to(vc.dtype)


def top_triplets(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k leading singular triplets (U_k, s_k, V_k), V_k as columns; the SVD's when the k-th singular
    value is (close to) zero, since its vectors are then LAPACK's choice of a null-space basis."""
    g = GramEigh.of(a, k, only_leading=True)
    if g is not None:
        return g.top(k)
    u, s, vh = svd(a)
    return u[..., :k].clone(), s[..., :k].clone(), vh[..., :k, :].mT.clone()  # not views holding all of U


# The residual's Gram matrix τᵀτ − BᵀB loses to cancellation what the projection removes: taken while the
# residual keeps at least this share of τ's squared norm (float32 then errs by at most 4× what forming the
# residual would), else the residual is formed.
RESIDUAL_MIN_SHARE = 0.25


def residual_top_triplets(
    tau: torch.Tensor, u_c: torch.Tensor, k: int, gram: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The k leading triplets of R = (I − U_c U_cᵀ) τ (Iso-CTS's residual) for τ with more rows than
    columns, U_c (m × c) orthonormal, without forming R: with B = U_cᵀ τ, RᵀR = τᵀτ − BᵀB and R v = τ v −
    U_c (B v). That skips the m·c·n multiply-adds of U_c B (2816 × 1024 with c = 816: 13.4 → 9.5 GFLOP per
    task). Float32 only; where float32 does not resolve the k leading values, or the residual is too small
    a share of τ (RESIDUAL_MIN_SHARE), the residual is formed and decomposed as any matrix. `gram`: τᵀτ's
    lower triangle, formed already by lower_gram (and used up here)."""
    m, n = tau.shape
    if m <= n or not 0 < k < n or tau.dtype != torch.float32:
        raise ValueError(
            f"residual_top_triplets: a tall float32 τ and 0 < k < n, got {tuple(tau.shape)}, k={k}"
        )
    b = u_c.T @ tau
    gram = lower_gram(tau, torch.float32, tau) if gram is None else gram
    whole = float(gram.diagonal().sum())
    lower_gram(b, torch.float32, tau, gram, alpha=-1.0)
    if float(gram.diagonal().sum()) >= RESIDUAL_MIN_SHARE * whole > 0:
        try:
            with decomposition_threads(gram):
                if _leading_pays(tau, k):
                    lam, q = leading_eigh(gram, k)
                else:
                    lam, q = torch.linalg.eigh(gram)
                    lam, q = lam.flip(-1)[:k], q.flip(-1)[:, :k]
        except torch.linalg.LinAlgError:
            lam = None
        if lam is not None and bool(lam[k - 1] > lam[0] * F32_RCOND_LEADING):
            s = lam.sqrt()
            x = q / s
            u = (tau @ x).addmm_(u_c, b @ x, alpha=-1.0)
            return u, s, q.contiguous()
    return top_triplets(tau - u_c @ b, k)


def leading_and_rest(a: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """For A with no more rows than columns: its k leading triplets (U_k, s_k, V_k) and an orthonormal basis
    of the rest of its column space, the other m − k left singular vectors (all m come out of A Aᵀ)."""
    g = GramEigh.of(a, k, left=True)
    if g is not None:
        u, s, v = g.top(k)
        return u, s, v, g.q[:, k:].to(a.dtype)
    u, s, vh = svd(a)
    return u[:, :k].clone(), s[:k].clone(), vh[:k].mT.clone(), u[:, k:].clone()


def mean_delta(inputs: TensorInputs) -> torch.Tensor:
    """Δ = (Σ τ_i) / T, the sum in checkpoint order, every step rounded to float32 on its own: task
    arithmetic's order with weights 1 and `normalize` (task_vectors.TaskVectorMerger.delta), so the engine
    may merge it from the stored rows with the same bytes (gathered.MeanMerger). Without the engine's
    stack, the τ_i are formed one at a time."""
    n = len(inputs.models)
    if inputs.task_vectors is not None:
        tv = inputs.task_vectors
        out = weighted_sum(tv.reshape(n, -1), [1.0] * n).view(tv.shape[1:])
    else:
        out = torch.sub(inputs.models[0], inputs.base)
        for m in list(inputs.models)[1:]:
            out.add_(torch.sub(m, inputs.base))
    return out.div_(float(n))


def task_sum(tv: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ τ_i over the first axis, added in task order (into `out` when given): each entry's sum is the same
    whether the rows come whole or in blocks (gathered.py)."""
    out = torch.empty_like(tv[0]) if out is None else out
    out.copy_(tv[0])
    for i in range(1, tv.shape[0]):
        out.add_(tv[i])
    return out


class TsvmParts:
    """TSV-M built from the tasks: `add(i, τ_i)` keeps task i's k = floor(r/T) leading singular triplets
    (`add_all` every task's, two decompositions at a time), `delta()` orthogonalises the blocks by polar
    factors (the two at once).

    The zero-padded tail of Ucat/scat/Vcat (when T does not divide r) carries zero singular values and
    does not change the polar factor of the used columns, so only the T·k used columns are formed. `add`
    holds one task's decomposition at a time, `add_all` two: at 8B shapes 12 full U factors of an MLP
    matrix would not fit.
    """

    def __init__(self, m: int, n: int, n_tasks: int):
        self.m, self.n, self.n_tasks = m, n, n_tasks
        self.k = min(m, n) // n_tasks
        self.ucat = self.vcat = self.scat = None

    def _blocks_like(self, tau: torch.Tensor) -> None:
        if self.ucat is None:
            like = {"dtype": tau.dtype, "device": tau.device}
            self.ucat = torch.empty((self.m, self.n_tasks * self.k), **like)
            self.vcat = torch.empty((self.n, self.n_tasks * self.k), **like)
            self.scat = torch.empty(self.n_tasks * self.k, **like)

    def _keep(self, i: int, tau: torch.Tensor) -> None:
        k = self.k
        u, s, v = top_triplets(tau, k)
        self.ucat[:, i * k : (i + 1) * k] = u
        self.scat[i * k : (i + 1) * k] = s
        self.vcat[:, i * k : (i + 1) * k] = v

    @single_threaded
    def add(self, i: int, tau: torch.Tensor) -> None:
        if self.k == 0:
            return
        self._blocks_like(tau)
        self._keep(i, tau)

    def add_all(self, taus: Sequence[torch.Tensor]) -> None:
        """`add(i, taus[i])` for every task, two at a time (the same bytes)."""
        if self.k == 0 or not taus:
            return
        self._blocks_like(taus[0])
        two_at_a_time(taus[0], [functools.partial(self._keep, i, tau) for i, tau in enumerate(taus)])

    def delta(self, like: torch.Tensor) -> torch.Tensor:
        if self.ucat is None:
            return torch.zeros((self.m, self.n), dtype=like.dtype, device=like.device)
        ucat, vcat, scat = self.ucat, self.vcat, self.scat
        self.ucat = self.vcat = self.scat = None
        pu, pv = two_at_a_time(like, [functools.partial(polar, ucat), functools.partial(polar, vcat)])
        with decomposition_threads(like):
            return matmul_in_halves(pu.mul_(scat), pv.T, like)


def tsvm_delta(tv: torch.Tensor) -> torch.Tensor:
    """TSV-M: each task's k = floor(r/T) leading singular triplets, blocks orthogonalised by polar factors."""
    n_tasks, m, n = tv.shape
    parts = TsvmParts(m, n, n_tasks)
    parts.add_all(tv.unbind(0))
    return parts.delta(tv)


@single_threaded
def iso_c_from_sum(total: torch.Tensor) -> torch.Tensor:
    """Iso-C from Σ τ_i: its spectrum flattened to the mean singular value, Δ = σ̄ U Vᵀ."""
    p, s = polar_and_singular_values(total)
    return p.mul_(s.mean())


def iso_c_delta(tv: torch.Tensor) -> torch.Tensor:
    """Iso-C: flatten the spectrum of Σ τ_i to its mean singular value, Δ = σ̄ U Vᵀ."""
    return iso_c_from_sum(task_sum(tv))


def iso_cts_sizes(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """(c, d): common rank c = int(r·f) lowered until T divides r − c; each task gets d = (r − c)/T.

    When T > r − c cannot be met with c ≥ 0 (more tasks than rank), c = r mod T, d = r // T.
    """
    c0 = int(r * fraction)
    c = r - n_tasks * -(-(r - c0) // n_tasks)  # largest c ≤ c0 with (r − c) % T == 0
    if c < 0:
        c = r % n_tasks
    return c, (r - c) // n_tasks


class IsoCtsParts:
    """Iso-CTS built from Σ τ_i (`common`) and then the tasks (`add(τ_i)` one at a time, `add_all` two at a
    time): the common subspace of the sum plus each task's top d directions orthogonal to it, made
    isotropic in `delta()`. At most two tasks' residuals at a time: a (T, m, n) residual stack would double
    the memory.

    When m ≤ n the residual (I − U_c U_cᵀ) τ_i is U_r (U_rᵀ τ_i), with U_r the other m − c left singular
    vectors of the sum, so only the small (m − c) × n factor is decomposed. The task blocks lie in the
    complement of U_c, so the polar factor of [U_c, U_tasks] is [U_c, polar(U_tasks)]: (r − c) columns."""

    def __init__(self, m: int, n: int, n_tasks: int, fraction: float):
        self.m, self.n = m, n
        self.c, self.d = iso_cts_sizes(min(m, n), n_tasks, fraction)
        self.us: list[torch.Tensor] = []
        self.ss: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []
        self.u_rest: torch.Tensor | None = None

    @single_threaded
    def common(self, total: torch.Tensor) -> None:
        self.u_rest = None
        if self.c > 0 and self.m <= self.n and self.d > 0:
            u, s, v, self.u_rest = leading_and_rest(total, self.c)
        elif self.c > 0:
            u, s, v = top_triplets(total, self.c)
        else:
            u, s, v = total.new_zeros((self.m, 0)), total.new_zeros(0), total.new_zeros((self.n, 0))
        self.us, self.ss, self.vs = [u], [s], [v]

    def _from_gram(self, tau: torch.Tensor) -> bool:
        """Whether τ's residual is decomposed from τᵀτ − BᵀB (residual_top_triplets): a tall matrix."""
        return self.m > self.n and 0 < self.d < self.n and tau.dtype == torch.float32

    def _residual_triplets(
        self, tau: torch.Tensor, gram: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.u_rest is not None:
            w, st, vt = top_triplets(self.u_rest.T @ tau, self.d)
            return self.u_rest @ w, st, vt
        u_c = self.us[0]
        if self._from_gram(tau):
            return residual_top_triplets(tau, u_c, self.d, gram)
        return top_triplets(tau - u_c @ (u_c.T @ tau), self.d)

    def _keep(self, triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        ut, st, vt = triplets
        self.us.append(ut)
        self.ss.append(st)
        self.vs.append(vt)

    @single_threaded
    def add(self, tau: torch.Tensor) -> None:
        if self.d > 0:
            self._keep(self._residual_triplets(tau))

    def add_all(self, taus: Sequence[torch.Tensor], grams: Sequence[torch.Tensor] = ()) -> None:
        """`add` of every task in order, two residual decompositions at a time (the same bytes); `grams`:
        the first tasks' τᵀτ, formed already (common_and_add_all)."""
        if self.d <= 0 or not taus:
            return
        jobs = [
            functools.partial(self._residual_triplets, tau, grams[i] if i < len(grams) else None)
            for i, tau in enumerate(taus)
        ]
        for triplets in two_at_a_time(taus[0], jobs):
            self._keep(triplets)

    # The tasks whose τᵀτ the second lane forms during the common decomposition (common_and_add_all): the
    # first round of residuals and then some, held as that many n × n float32 matrices meanwhile.
    EARLY_GRAMS = 4

    def common_and_add_all(self, total: torch.Tensor, taus: Sequence[torch.Tensor]) -> None:
        """`common(total)` then `add_all(taus)`, the same bytes. The common decomposition is one job the
        second lane cannot share; where the residuals are decomposed from τᵀτ − BᵀB (a tall matrix), that
        lane forms the first EARLY_GRAMS tasks' τᵀτ meanwhile (2816 × 1024, T = 4: 0.1 s of the common
        decomposition's 0.16 s)."""
        if not (taus and self._from_gram(taus[0]) and second_lane_free(total)):
            self.common(total)
            self.add_all(taus)
            return
        first = taus[: self.EARLY_GRAMS]
        _, grams = two_at_a_time(
            total,
            [
                functools.partial(self.common, total),
                lambda: [lower_gram(tau, torch.float32, tau) for tau in first],
            ],
        )
        self.add_all(taus, grams)

    def delta(self, like: torch.Tensor) -> torch.Tensor:
        u_c, u_tasks = self.us[0], self.us[1:]
        v_c, v_tasks = self.vs[0], self.vs[1:]
        s_all = torch.cat(self.ss)
        self.us, self.ss, self.vs, self.u_rest = [], [], [], None
        if s_all.numel() == 0:
            return torch.zeros((self.m, self.n), dtype=like.dtype, device=like.device)
        if v_tasks:
            jobs = [functools.partial(polar_beside_orthonormal, v_c, torch.cat(v_tasks, dim=1))]
        else:
            jobs = [functools.partial(polar, v_c)]
        if u_tasks:
            jobs.append(lambda: polar(torch.cat(u_tasks, dim=1)))
        pv, *pu = two_at_a_time(like, jobs)
        with decomposition_threads(like):
            u_all = torch.cat([u_c, pu[0]], dim=1) if u_tasks else u_c
            return matmul_in_halves(u_all, pv.T, like).mul_(s_all.mean())


def iso_cts_delta(tv: torch.Tensor, fraction: float) -> torch.Tensor:
    """Iso-CTS: common subspace of Σ τ_i plus each task's top directions orthogonal to it, isotropic."""
    n_tasks, m, n = tv.shape
    parts = IsoCtsParts(m, n, n_tasks, fraction)
    parts.common_and_add_all(task_sum(tv), tv.unbind(0))
    return parts.delta(tv)
