"""Every method MergeLab offers, with its metadata and parameter specs, in the order the app lists them."""

from __future__ import annotations

from merging.errors import RecipeError
from merging.methods import (
    boosting,
    gathered,
    linear,
    model_stock,
    passthrough,
    sce,
    selective,
    spherical,
    subspace,
)
from merging.methods.base import MethodSpec
from merging.methods.task_vectors import Preset, block_factory, della_check, merge_with, preset_params

TA = Preset("none", consensus=False, normalize=False, rescale=False)
TIES = Preset("magnitude", consensus=True, normalize=True, rescale=False)
DARE_LINEAR = Preset("random", consensus=False, normalize=False, rescale=True)
DARE_TIES = Preset("random", consensus=True, normalize=False, rescale=True)
BREADCRUMBS = Preset("magnitude_outliers", consensus=False, normalize=False, rescale=False)
BREADCRUMBS_TIES = Preset("magnitude_outliers", consensus=True, normalize=False, rescale=False)
DELLA = Preset("della_magprune", consensus=True, normalize=True, rescale=True)
DELLA_LINEAR = Preset("della_magprune", consensus=False, normalize=False, rescale=True)

REF_TA = "Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv:2212.04089"
REF_TIES = "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models, arXiv:2306.01708"
REF_DARE = "Yu et al. 2024, Language Models are Super Mario (DARE), arXiv:2311.03099"
REF_BREADCRUMBS = "Davari & Belilovsky 2024, Model Breadcrumbs, arXiv:2312.06795"
REF_DELLA = (
    "Deep et al. 2024, DELLA-Merging: Reducing Interference via Magnitude-Based Sampling, arXiv:2406.11617"
)
REF_ISO = (
    "Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with Common and Task-Specific "
    "Subspaces, arXiv:2502.04959"
)
REF_SB = "Skorobogat et al. 2025, Subspace-Boosted Model Merging, arXiv:2506.16506"
REF_MERGEKIT = (
    "Goddard et al. 2024, Arcee's MergeKit: A Toolkit for Merging Large Language Models, arXiv:2403.13257"
)


def _task_vector_method(
    name: str, title: str, summary: str, reference: str, preset: Preset, **kw
) -> MethodSpec:
    paper = kw.pop("paper", {})
    return MethodSpec(
        name=name,
        title=title,
        summary=summary,
        reference=reference,
        params=preset_params(preset, **paper),
        merge=merge_with(preset),
        randomized=preset.sparsifier in ("random", "della_magprune"),
        check=della_check(name) if preset.sparsifier == "della_magprune" else None,
        block_merger=block_factory(preset),
        **kw,
    )


def _boosted(
    name: str, title: str, base_summary: str, base_ref: str, preset: Preset, paper: dict
) -> MethodSpec:
    return MethodSpec(
        name=name,
        title=title,
        summary=f"{base_summary}, then Subspace Boosting lifts each projection update's weak singular values",
        reference=f"{REF_SB}; {base_ref}",
        params=preset_params(preset, **paper) + boosting.PARAMS,
        merge=boosting.boosted_merge(preset),
        block_merger=boosting.boosted_block_factory(preset),
    )


_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="linear",
        title="Linear (weighted average)",
        summary="Weighted average of the checkpoints' weights; no base model needed",
        reference="Wortsman et al. 2022, Model soups, arXiv:2203.05482",
        params=linear.PARAMS,
        merge=linear.merge,
        needs_base=False,
        check=linear.check,
        blockwise=True,
    ),
    _task_vector_method(
        "task_arithmetic",
        "Task Arithmetic",
        "Adds the weighted sum of the task vectors (checkpoint − base) to the base",
        REF_TA,
        TA,
        paper={"weight_paper": 1.0, "lambda_paper": 1.0},
        blockwise=True,
    ),
    _task_vector_method(
        "ties",
        "TIES-Merging",
        "Trims each task vector to its largest entries, elects a sign per entry, averages the agreeing ones",
        REF_TIES,
        TIES,
        paper={"weight_paper": 1.0, "density_paper": 0.1, "lambda_paper": 1.0},
    ),
    _task_vector_method(
        "dare_linear",
        "DARE (linear)",
        "Randomly drops task-vector entries, rescales the rest, and adds the weighted sum",
        REF_DARE,
        DARE_LINEAR,
    ),
    _task_vector_method(
        "dare_ties",
        "DARE-TIES",
        "Randomly drops task-vector entries, rescales the rest, then TIES sign election",
        REF_DARE,
        DARE_TIES,
    ),
    _task_vector_method(
        "breadcrumbs",
        "Model Breadcrumbs",
        "Drops each task vector's largest outliers and smallest entries, adds the weighted sum",
        REF_BREADCRUMBS,
        BREADCRUMBS,
    ),
    _task_vector_method(
        "breadcrumbs_ties",
        "Model Breadcrumbs + TIES",
        "Breadcrumbs sparsification followed by TIES sign election",
        REF_BREADCRUMBS,
        BREADCRUMBS_TIES,
    ),
    _task_vector_method(
        "della",
        "DELLA-Merging",
        "Drops entries at random with lower keep odds for small magnitudes, then TIES sign election",
        REF_DELLA,
        DELLA,
    ),
    _task_vector_method(
        "della_linear",
        "DELLA (linear)",
        "DELLA's magnitude-aware random drop, then the weighted sum without sign election",
        REF_DELLA,
        DELLA_LINEAR,
    ),
    MethodSpec(
        name="model_stock",
        title="Model Stock",
        summary="Moves from the base toward the checkpoints' mean by how aligned their task vectors are",
        reference=(
            "Jang et al. 2024, Model Stock: All we need is just a few fine-tuned models, arXiv:2403.19522"
        ),
        params=model_stock.PARAMS,
        merge=model_stock.merge,
        min_models=2,
        blockwise_when=model_stock.rows_independent,
        block_merger=model_stock.block_factory,
    ),
    MethodSpec(
        name="tsvm",
        title="TSV-Merge",
        summary="Keeps each task's top 1/T singular directions per matrix and orthogonalises them",
        reference=(
            "Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference in Model Merging, "
            "arXiv:2412.00081"
        ),
        params=(subspace.LAMBDA,),
        merge=gathered.merge_tsvm,
        block_merger=gathered.tsvm_blocks,
    ),
    MethodSpec(
        name="iso_c",
        title="Iso-C",
        summary="Sums the task vectors and flattens each matrix's spectrum to its mean singular value",
        reference=REF_ISO,
        params=(subspace.LAMBDA,),
        merge=gathered.merge_iso_c,
        block_merger=gathered.iso_c_blocks,
    ),
    MethodSpec(
        name="iso_cts",
        title="Iso-CTS",
        summary="Iso-C on a common subspace plus each task's own directions orthogonal to it",
        reference=REF_ISO,
        params=(subspace.LAMBDA, subspace.COMMON_SPACE_FRACTION),
        merge=gathered.merge_iso_cts,
        block_merger=gathered.iso_cts_blocks,
    ),
    _boosted(
        "task_arithmetic_sb",
        "Task Arithmetic + Subspace Boosting",
        "Task Arithmetic",
        REF_TA,
        TA,
        {"weight_paper": 1.0, "lambda_paper": 1.0},
    ),
    _boosted(
        "ties_sb",
        "TIES + Subspace Boosting",
        "TIES-Merging",
        REF_TIES,
        TIES,
        {"weight_paper": 1.0, "density_paper": 0.1, "lambda_paper": 1.0},
    ),
    MethodSpec(
        name="slerp",
        title="SLERP",
        summary="Follows the arc from the base (t = 0) to one other model (t = 1), keeping their norms",
        reference="Shoemake 1985, Animating Rotation with Quaternion Curves; as in " + REF_MERGEKIT,
        params=spherical.SLERP_PARAMS,
        merge=spherical.merge_slerp,
        max_models=1,
        block_merger=spherical.slerp_block_factory,
    ),
    MethodSpec(
        name="nuslerp",
        title="NuSLERP",
        summary="SLERP of two models by weight, whole tensors or per row; of task vectors with a base",
        reference=REF_MERGEKIT,
        params=spherical.NUSLERP_PARAMS,
        merge=spherical.merge_nuslerp,
        needs_base=False,
        min_models=2,
        max_models=2,
        blockwise_when=spherical.nuslerp_blockwise,
        block_merger=spherical.nuslerp_block_factory,
    ),
    MethodSpec(
        name="multislerp",
        title="Multi-SLERP",
        summary="Weighted mean direction of any number of models on the sphere, at their weighted norm",
        reference="Goddard 2025, Multi-SLERP (goddard.blog); as in " + REF_MERGEKIT,
        params=spherical.MULTISLERP_PARAMS,
        merge=spherical.merge_multislerp,
        block_merger=spherical.multislerp_block_factory,
        needs_base=False,
    ),
    MethodSpec(
        name="karcher",
        title="Karcher mean",
        summary="Riemannian mean of every input's direction (a base included), at their mean norm",
        reference="Karcher 1977, Riemannian center of mass and mollifier smoothing; as in " + REF_MERGEKIT,
        params=spherical.KARCHER_PARAMS,
        merge=spherical.merge_karcher,
        needs_base=False,
    ),
    MethodSpec(
        name="sce",
        title="SCE",
        summary="Keeps entries that vary most across models, weights models by update energy, elects signs",
        reference="Wan et al. 2024, FuseChat: Knowledge Fusion of Chat Models, arXiv:2408.07990",
        params=sce.PARAMS,
        merge=sce.merge,
    ),
    MethodSpec(
        name="nearswap",
        title="NearSwap",
        summary="Takes the other model's value where it is within t of the base's, moves partly elsewhere",
        reference="alchemonaut 2024, QuartetAnemoi-70B (Hugging Face model card); as in " + REF_MERGEKIT,
        params=selective.NEARSWAP_PARAMS,
        merge=selective.merge_nearswap,
        max_models=1,
        blockwise=True,
    ),
    MethodSpec(
        name="arcee_fusion",
        title="Arcee Fusion",
        summary="Takes the other model's changes only where a KL-weighted importance score is an outlier",
        reference="Arcee AI 2025, Arcee Fusion; as in " + REF_MERGEKIT,
        params=(),
        merge=selective.merge_arcee_fusion,
        max_models=1,
    ),
    MethodSpec(
        name="passthrough",
        title="Passthrough",
        summary="Copies one model's tensors unchanged (optionally scaled); with slices, stacks layers",
        reference=REF_MERGEKIT,
        params=passthrough.PARAMS,
        merge=passthrough.merge,
        needs_base=False,
        max_models=1,
        blockwise=True,
    ),
)

_BY_NAME = {m.name: m for m in _METHODS} | {a: m for m in _METHODS for a in m.aliases}


def all_methods() -> list[MethodSpec]:
    """Every registered method, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The method called `name` (or one of its aliases); RecipeError listing the known ones otherwise."""
    spec = _BY_NAME.get(name) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join(m.name for m in _METHODS)
        raise RecipeError(f"unknown merge method '{name}'; known methods: {known}")
    return spec
