"""Subspace methods of methods.md §3: TSV-M, Iso-C, Iso-CTS (per matrix, SVD in float32).

Embedding/LM-head tensors and every non-matrix tensor get the plain mean of the task vectors, as in the
paper's mergekit fork. Weights are not used (the fork ignores them); `lambda` scales the update.
"""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs
from merging.methods.blocks import merge_whole

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


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float32 (batched over leading dims); U, S, Vh with S descending.

    LAPACK's divide-and-conquer SVD (and CUDA's default driver) can fail to converge on ill-conditioned
    task vectors, e.g. Iso-CTS residuals whose tail singular values all but vanish. Like the paper's fork,
    retry: CUDA's robust gesvd driver, then float64, then an eigendecomposition of the smaller Gram
    matrix, which always converges (its tiny singular values are less accurate, which no method here
    relies on).
    """
    a = a.float()
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


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor P Qᵀ of A = P D Qᵀ: the nearest matrix with orthonormal columns."""
    p, _, qh = svd(a)
    return p @ qh


def _mean_delta(inputs: TensorInputs) -> torch.Tensor:
    """Δ = (1/T) Σ τ_i = mean(θ_i) − θ0; without the engine's stack, accumulated without stacking."""
    if inputs.task_vectors is not None:
        return inputs.task_vectors.mean(0)
    out = torch.zeros_like(inputs.base)
    for m in inputs.models:
        out.add_(m)
    return out.div_(len(inputs.models)).sub_(inputs.base)


def task_sum(tv: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ τ_i over the first axis, added in task order (into `out` when given): each entry's sum is the same
    whether the rows come whole or in blocks (gathered.py)."""
    out = torch.empty_like(tv[0]) if out is None else out
    out.copy_(tv[0])
    for i in range(1, tv.shape[0]):
        out.add_(tv[i])
    return out


class TsvmParts:
    """TSV-M built one task at a time: `add(i, τ_i)` keeps task i's k = floor(r/T) leading singular
    triplets, `delta()` orthogonalises the blocks by polar factors.

    The zero-padded tail of Ucat/scat/Vcat (when T does not divide r) carries zero singular values and
    does not change the polar factor of the used columns, so only the T·k used columns are formed. Only one
    task's SVD exists at a time: at 8B shapes 12 full U factors of an MLP matrix would not fit.
    """

    def __init__(self, m: int, n: int, n_tasks: int):
        self.m, self.n, self.n_tasks = m, n, n_tasks
        self.k = min(m, n) // n_tasks
        self.ucat = self.vcat = self.scat = None

    def add(self, i: int, tau: torch.Tensor) -> None:
        k = self.k
        if k == 0:
            return
        if self.ucat is None:
            like = {"dtype": tau.dtype, "device": tau.device}
            self.ucat = torch.empty((self.m, self.n_tasks * k), **like)
            self.vcat = torch.empty((self.n, self.n_tasks * k), **like)
            self.scat = torch.empty(self.n_tasks * k, **like)
        u, s, vh = svd(tau)
        self.ucat[:, i * k : (i + 1) * k] = u[:, :k]
        self.scat[i * k : (i + 1) * k] = s[:k]
        self.vcat[:, i * k : (i + 1) * k] = vh[:k].T

    def delta(self, like: torch.Tensor) -> torch.Tensor:
        if self.ucat is None:
            return torch.zeros((self.m, self.n), dtype=like.dtype, device=like.device)
        out = (polar(self.ucat) * self.scat) @ polar(self.vcat).T
        self.ucat = self.vcat = self.scat = None
        return out


def tsvm_delta(tv: torch.Tensor) -> torch.Tensor:
    """TSV-M: each task's k = floor(r/T) leading singular triplets, blocks orthogonalised by polar factors."""
    n_tasks, m, n = tv.shape
    parts = TsvmParts(m, n, n_tasks)
    for i in range(n_tasks):
        parts.add(i, tv[i])
    return parts.delta(tv)


def iso_c_from_sum(total: torch.Tensor) -> torch.Tensor:
    """Iso-C from Σ τ_i: its spectrum flattened to the mean singular value, Δ = σ̄ U Vᵀ."""
    u, s, vh = svd(total)
    return (u @ vh).mul_(s.mean())


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
    """Iso-CTS built from Σ τ_i (`common`) and then one task at a time (`add(τ_i)`): the common subspace of
    the sum plus each task's top d directions orthogonal to it, made isotropic in `delta()`. One task's
    residual at a time: a (T, m, n) residual stack would double the memory."""

    def __init__(self, m: int, n: int, n_tasks: int, fraction: float):
        self.m, self.n = m, n
        self.c, self.d = iso_cts_sizes(min(m, n), n_tasks, fraction)
        self.us: list[torch.Tensor] = []
        self.ss: list[torch.Tensor] = []
        self.vhs: list[torch.Tensor] = []

    def common(self, total: torch.Tensor) -> None:
        u, s, vh = svd(total)
        c = self.c
        self.us, self.ss, self.vhs = [u[:, :c].clone()], [s[:c]], [vh[:c].clone()]

    def add(self, tau: torch.Tensor) -> None:
        if self.d <= 0:
            return
        u_c = self.us[0]
        resid = tau - u_c @ (u_c.T @ tau)
        ut, st, vht = svd(resid)
        del resid
        self.us.append(ut[:, : self.d].clone())
        self.ss.append(st[: self.d])
        self.vhs.append(vht[: self.d].clone())

    def delta(self, like: torch.Tensor) -> torch.Tensor:
        u_all = torch.cat(self.us, dim=1)
        s_all = torch.cat(self.ss)
        vh_all = torch.cat(self.vhs, dim=0)
        self.us, self.ss, self.vhs = [], [], []
        if s_all.numel() == 0:
            return torch.zeros((self.m, self.n), dtype=like.dtype, device=like.device)
        return (polar(u_all) @ polar(vh_all)).mul_(s_all.mean())


def iso_cts_delta(tv: torch.Tensor, fraction: float) -> torch.Tensor:
    """Iso-CTS: common subspace of Σ τ_i plus each task's top directions orthogonal to it, isotropic."""
    n_tasks, m, n = tv.shape
    parts = IsoCtsParts(m, n, n_tasks, fraction)
    parts.common(task_sum(tv))
    for i in range(n_tasks):
        parts.add(tv[i])
    return parts.delta(tv)


def block_factory(method: str):
    """`MethodSpec.block_merger` of tsvm, iso_c or iso_cts: a matrix that takes the SVD path gathers what
    the method needs from row blocks (gathered.py); the embeddings, LM head and vectors get the mean of the
    task vectors, which treats rows independently."""

    def factory(ctx):
        from merging.methods import gathered
        from merging.methods.blocks import RowwiseMerger

        if len(ctx.shape) == 2 and not any(s in ctx.name for s in SKIP_NAMES):
            return gathered.SUBSPACE[method](ctx)
        return RowwiseMerger(_mean_merge)

    return factory


def _mean_merge(inputs: TensorInputs) -> torch.Tensor:
    if inputs.base is None:
        raise RecipeError(f"tensor {inputs.name}: this method needs a base model")
    delta = _mean_delta(inputs)
    lam = float(inputs.params["lambda"])
    if lam != 1.0:
        delta.mul_(lam)
    return delta.add_(inputs.base)


# One code path whole or blocked: a whole tensor is one block of the same merger (blocks.merge_whole).
tsvm_blocks, iso_c_blocks, iso_cts_blocks = (block_factory(m) for m in ("tsvm", "iso_c", "iso_cts"))
merge_tsvm = merge_whole(tsvm_blocks)
merge_iso_c = merge_whole(iso_c_blocks)
merge_iso_cts = merge_whole(iso_cts_blocks)
