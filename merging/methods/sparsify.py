"""Sparsifiers of the task-vector pipeline (methods.md §1): which entries of one task vector survive.

Every function here works IN PLACE on a buffer the pipeline owns (never on a caller's tensor) and
returns it, so sparsifying a 500M-entry embedding needs no second copy of it. Magnitude ranks use
kthvalue (O(n)) instead of a full sort; ties at a threshold are broken by position so the kept count is
exact and the result is deterministic on cpu and cuda.
"""

from __future__ import annotations

import torch

from merging.methods.order_stats import rank_window_mask, smallest_mask
from merging.native.magnitude_ranks import della_probabilities

RESCALE_EPS = 1e-7


def _apply(t: torch.Tensor, keep: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Zero the entries not kept; with `rescale`, restore the L1 norm of the original vector."""
    return _drop(t, ~keep, rescale)


def _drop(t: torch.Tensor, drop: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Zero the dropped entries; with `rescale`, restore the L1 norm of the original vector."""
    before = t.abs().sum() if rescale else None
    t.masked_fill_(drop, 0)
    if rescale:
        after = t.abs().sum()
        if before >= RESCALE_EPS and after >= RESCALE_EPS:
            t.mul_(before / after)
    return t


def magnitude_(t: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """TIES trim: keep the max(1, int(density·n)) largest |entries|; density ≥ 1 keeps all, ≤ 0 none."""
    if density >= 1:
        return t
    if density <= 0:
        return t.zero_()
    flat = t.view(-1)
    n = flat.numel()
    k = max(1, int(density * n))
    _drop(flat, smallest_mask(flat.abs(), n - k), rescale)
    return t


def magnitude_outliers_(t: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    """Breadcrumbs: drop the gamma·n largest |entries| (outliers) and the smallest, keeping int(density·n)."""
    if density >= 1:
        return t
    flat = t.view(-1)
    n = flat.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    keep = rank_window_mask(flat.abs(), n_bot, n_bot + target)
    _apply(flat, keep, rescale)
    return t


def random_(
    t: torch.Tensor, density: float, generator: torch.Generator | None, rescale: bool = True
) -> torch.Tensor:
    """DARE: keep each entry independently with probability `density`, drawn from `generator`."""
    if density >= 1:
        return t
    keep = torch.rand(t.shape, generator=generator, device=t.device, dtype=torch.float32) < density
    return _apply(t, keep, rescale)


def della_keep_probabilities(rows: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """p = (density − ε) + 2ε·r per entry of a (rows, cols) tensor, r = ascending |value| rank / (cols − 1).

    Ties in |value| are ranked by position. A one-entry row has r = 0.5, i.e. p = density.
    """
    ncol = rows.shape[1]
    if ncol == 1:
        return torch.full_like(rows, density)
    native = della_probabilities(rows, 2 * epsilon / (ncol - 1), density - epsilon)
    if native is not None:
        return native
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(rows)
    ranks.scatter_(1, order, torch.arange(ncol, device=rows.device, dtype=rows.dtype).expand_as(rows))
    del order
    return ranks.mul_(2 * epsilon / (ncol - 1)).add_(density - epsilon)


def della_magprune_(
    t: torch.Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator | None,
    rescale: bool = True,
) -> torch.Tensor:
    """DELLA MagPrune: per row (a vector is one row), keep entries with della_keep_probabilities.

    The caller has checked 0 < density ± ε < 1 (resolve_params); density ≥ 1 keeps all, ≤ 0 none.
    """
    if density >= 1:
        return t
    if density <= 0:
        return t.zero_()
    rows = t.view(1, -1) if t.dim() < 2 else t.view(-1, t.shape[-1])
    probs = della_keep_probabilities(rows, density, epsilon)
    keep = torch.rand(rows.shape, generator=generator, device=t.device, dtype=torch.float32) < probs
    del probs
    _apply(rows, keep, rescale)
    return t
