"""The stored route (merging/stored.py): task arithmetic merged from the stored bfloat16 rows in one native
pass gives the float32 route's bytes and geometry figures, whole or in row blocks, takes only the tensors it
can, and hands anything non-finite back to the float32 route, which names it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging import DirectorySink, open_checkpoint, run_merge
from merging import engine as engine_module
from merging.budget import BASE_OVERHEAD
from merging.compat import TensorSource
from merging.errors import NonFiniteError
from merging.geometry import TensorSums
from merging.native import geometry_sums, stored_arithmetic
from merging.native.stored_arithmetic import Weighted
from merging.reader import Prefetcher, ReadUnit, RowReader
from tests.merging.helpers import leftovers, recipe

needs_cc = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler on this machine"
)
pytestmark = needs_cc

SMALL = 60_000  # usable bytes: every tensor of the tiny family with 32+ rows is cut into blocks


def _as_bf16(src: Path, dst: Path, edit=None) -> Path:
    """A copy of a tiny checkpoint stored in bfloat16 (`edit(tensors)` changes it first)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items()}
    if edit is not None:
        edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def bf16_family(tiny_llama_family, tmp_path_factory):
    base, cks = tiny_llama_family
    root = tmp_path_factory.mktemp("bf16")
    return _as_bf16(base, root / "base"), [_as_bf16(c, root / c.name) for c in cks]


def _spy_stored(monkeypatch) -> list[str]:
    """Names of the units the engine merged on the stored route."""
    names: list[str] = []
    real = engine_module.merge_stored

    def spy(stack, terms, sums, out_dtype):
        out, finite = real(stack, terms, sums, out_dtype)
        names.append(tuple(stack.shape))
        return out, finite

    monkeypatch.setattr(engine_module, "merge_stored", spy)
    return names


def _run(r, out: Path, monkeypatch, stored: bool, **kw):
    with monkeypatch.context() as m:
        if not stored:
            m.setattr(engine_module, "stored_terms", lambda *a, **k: None)
        return run_merge(r, DirectorySink(out), device="cpu", **kw)


TERMS = {
    "weights 1": ({"weight": 1.0}, {}),
    "mixed weights, lambda": ({"weight": 0.6}, {"lambda": 0.7}),
    "normalize": ({"weight": 0.3}, {"normalize": True}),
}


@pytest.mark.parametrize("blocked", [False, True], ids=["whole", "blocks"])
@pytest.mark.parametrize("terms", list(TERMS), ids=list(TERMS))
def test_the_stored_route_gives_the_float32_routes_bytes_and_figures(
    bf16_family, tmp_path, monkeypatch, terms, blocked
):
    base, cks = bf16_family
    per, params = TERMS[terms]
    r = recipe("task_arithmetic", base, cks, per, parameters=params)
    r.models[1].parameters["weight"] = 1.3  # checkpoints weighted apart
    kw = {"max_memory": BASE_OVERHEAD + SMALL} if blocked else {}
    taken = _spy_stored(monkeypatch)
    fast = _run(r, tmp_path / "stored", monkeypatch, True, **kw)
    n_stored = len(taken)
    slow = _run(r, tmp_path / "float32", monkeypatch, False, **kw)
    assert n_stored > 0 and len(taken) == n_stored  # the first run took the stored route, the second not
    if blocked:
        assert any(shape[1] < 64 for shape in taken[:n_stored] if len(shape) == 3)  # row blocks
    assert (fast.output_path / "model.safetensors").read_bytes() == (
        slow.output_path / "model.safetensors"
    ).read_bytes()
    assert fast.stats.to_rows() == slow.stats.to_rows()  # every figure, bit for bit
    assert fast.fingerprint == slow.fingerprint


def test_a_method_whose_plain_tensors_are_task_arithmetic_merges_those_on_the_stored_route(
    bf16_family, tmp_path, monkeypatch
):
    """task_arithmetic_sb boosts the matrices' spectra and merges the embeddings and norms as task
    arithmetic: those take the stored route, with the float32 route's bytes and figures."""
    base, cks = bf16_family
    r = recipe("task_arithmetic_sb", base, cks, {"weight": 0.8})
    taken = _spy_stored(monkeypatch)
    fast = _run(r, tmp_path / "stored", monkeypatch, True)
    slow = _run(r, tmp_path / "float32", monkeypatch, False)
    assert 0 < len(taken) < len(fast.stats.tensors)
    assert (fast.output_path / "model.safetensors").read_bytes() == (
        slow.output_path / "model.safetensors"
    ).read_bytes()
    assert fast.stats.to_rows() == slow.stats.to_rows()


@pytest.mark.parametrize("method", ["tsvm", "iso_c", "iso_cts"])
@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_the_subspace_methods_merge_their_means_on_the_stored_route(
    bf16_family, tmp_path, monkeypatch, method, lam
):
    """The embeddings, LM head and vectors of the subspace methods are θ0 + λ·(Σ τ_i)/T (methods.md §3),
    task arithmetic's order with normalize: the stored route takes them, with the float32 route's bytes and
    figures."""
    base, cks = bf16_family
    r = recipe(method, base, cks, parameters={"lambda": lam})
    taken = _spy_stored(monkeypatch)
    fast = _run(r, tmp_path / "stored", monkeypatch, True)
    slow = _run(r, tmp_path / "float32", monkeypatch, False)
    matrices = [t for t in fast.stats.tensors if len(t.shape) == 2 and "embed" not in t.name]
    matrices = [t for t in matrices if "lm_head" not in t.name]
    assert len(taken) == len(fast.stats.tensors) - len(matrices) > 0
    assert (fast.output_path / "model.safetensors").read_bytes() == (
        slow.output_path / "model.safetensors"
    ).read_bytes()
    assert fast.stats.to_rows() == slow.stats.to_rows()


def test_only_plain_weighted_sums_of_bfloat16_rows_take_the_stored_route(
    bf16_family, tiny_llama_family, tmp_path, monkeypatch
):
    base, cks = bf16_family
    taken = _spy_stored(monkeypatch)
    result = run_merge(recipe("task_arithmetic", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "a"))
    assert len(taken) == len(result.stats.tensors)  # every tensor

    taken.clear()
    spectrum = "model.layers.0.mlp.up_proj.weight"
    run_merge(
        recipe("task_arithmetic", base, cks, {"weight": 1.0}),
        DirectorySink(tmp_path / "b"),
        spectra=[spectrum],
    )
    assert len(taken) == len(result.stats.tensors) - 1  # the tensor whose spectrum needs its float32 τ

    taken.clear()
    run_merge(
        recipe("task_arithmetic", base, cks, {"weight": 1.0}, out_dtype="float32"),
        DirectorySink(tmp_path / "c"),
    )
    assert len(taken) == len(result.stats.tensors)  # bfloat16 in, float32 out

    taken.clear()
    run_merge(recipe("ties", base, cks, {"weight": 1.0, "density": 0.5}), DirectorySink(tmp_path / "d"))
    f32_base, _ = tiny_llama_family
    run_merge(recipe("task_arithmetic", f32_base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "e"))
    assert taken == []  # a sign election; a float32 base beside bfloat16 checkpoints


def test_a_nan_in_a_stored_checkpoint_is_named_as_on_the_float32_route(bf16_family, tmp_path, monkeypatch):
    base, cks = bf16_family

    def poison(tensors):
        tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")

    bad = _as_bf16(cks[1], tmp_path / "nan-ck", poison)  # already bf16: the copy keeps its bytes
    taken = _spy_stored(monkeypatch)
    with pytest.raises(
        NonFiniteError, match=r"'.*nan-ck'.*model\.layers\.1\.mlp\.up_proj\.weight.*1 NaN/Inf"
    ):
        run_merge(
            recipe("task_arithmetic", base, [cks[0], bad], {"weight": 1.0}), DirectorySink(tmp_path / "o")
        )
    assert taken  # the stored route ran up to it, then handed that tensor back
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "float32"])
def test_an_output_that_overflows_is_refused_as_on_the_float32_route(
    bf16_family, tmp_path, monkeypatch, stored
):
    base, cks = bf16_family
    r = recipe("task_arithmetic", base, cks, {"weight": 3e38}, parameters={"lambda": 1e30})
    with pytest.raises(NonFiniteError, match="the method produced NaN/Inf"):
        _run(r, tmp_path / "o", monkeypatch, stored)
    assert not (tmp_path / "o").exists()


DTYPE_PAIRS = [
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16),
]


@pytest.mark.parametrize(
    ("stored_dtype", "out_dtype"), DTYPE_PAIRS, ids=lambda d: str(d).removeprefix("torch.")
)
@pytest.mark.parametrize("tasks", [1, 3, 12])
@pytest.mark.parametrize("n", [1, 17, 1025, 100_003])
@pytest.mark.parametrize(("divisor", "lam"), [(None, 1.0), (2.7, 1.0), (None, 0.35), (0.9, 1.7)])
def test_the_kernel_gives_torchs_ops_and_the_geometry_kernels_sums(
    tasks, n, divisor, lam, stored_dtype, out_dtype
):
    """One pass over stored rows = widen, subtract, Σ w_i τ_i in order, divide, scale, add the base, cast;
    its sums = mergelab_geometry_sums over the widened stack and the float32 merged values."""
    if not {stored_dtype, out_dtype} <= stored_arithmetic.dtypes():
        pytest.skip("this compiler gives the kernel no float16")
    g = torch.Generator().manual_seed(n + tasks)
    base = torch.randn(n, generator=g)
    rows = torch.stack([*(base + 0.01 * torch.randn(n, generator=g) for _ in range(tasks)), base])
    stored = rows.to(stored_dtype)
    stored[0, ::13] = stored[-1, ::13]  # zero task-vector entries
    weights = [0.5 + 0.25 * i for i in range(tasks)]
    out = torch.empty(n, dtype=out_dtype)
    gram = torch.zeros(tasks + 1, tasks + 1, dtype=torch.float64)
    finite, sums = stored_arithmetic.merge_range(stored, 0, n, Weighted(weights, divisor, lam), out, gram)

    wide = stored.float()
    taus = wide[:-1] - wide[-1]
    merged = torch.mul(taus[0], weights[0])
    for i in range(1, tasks):
        merged.add_(torch.mul(taus[i], weights[i]))
    if divisor is not None:
        merged.div_(divisor)
    if lam != 1.0:
        merged.mul_(lam)
    merged.add_(wide[-1])
    assert finite
    bits = {2: torch.int16, 4: torch.int32}[out.element_size()]
    assert torch.equal(out.view(bits), merged.to(out_dtype).view(bits))

    stack = torch.cat([taus, wide[-1:]])
    want = torch.zeros_like(gram)
    assert tuple(sums) == tuple(geometry_sums.column_sums(stack, 0, n, want, merged))
    assert torch.equal(gram, want)


def test_the_kernel_reports_a_non_finite_output():
    stored = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).to(torch.bfloat16)
    out = torch.empty(2, dtype=torch.bfloat16)
    finite, _ = stored_arithmetic.merge_range(stored, 0, 2, Weighted([3e38 * 3e38], None, 1.0), out, None)
    assert not finite


def test_a_stored_unit_reads_the_bytes_as_stored_whole_or_in_two_halves(tmp_path, monkeypatch):
    from merging import reader as reader_module
    from tests.merging.test_blocks import _checkpoint_dir

    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(9, 5, generator=g).to(torch.bfloat16) for _ in range(3)]
    cks = []
    for i, w in enumerate(ws):
        (tmp_path / f"m{i}").mkdir()
        cks.append(open_checkpoint(str(_checkpoint_dir(tmp_path / f"m{i}", {"w": w, "v": w[0].clone()}))))
    src, vec = TensorSource("w"), TensorSource("v")
    units = [
        ReadUnit(0, "w", 2, 8, (6, 5), (cks[0], src), ((cks[1], src), (cks[2], src)), stored=torch.bfloat16),
        ReadUnit(1, "v", 0, 1, (5,), (cks[0], vec), ((cks[1], vec), (cks[2], vec)), stored=torch.bfloat16),
    ]
    for split in (1, 1 << 40):  # every unit split, none split
        monkeypatch.setattr(reader_module, "SPLIT_ELEMS", split)
        pre = Prefetcher(units, torch.device("cpu"))
        got = [stack.clone() for _, stack in pre]
        pre.close()
        assert got[0].dtype == torch.bfloat16
        assert torch.equal(
            got[0].view(torch.int16), torch.stack([ws[1], ws[2], ws[0]])[:, 2:8].view(torch.int16)
        )
        assert torch.equal(
            got[1].view(torch.int16), torch.stack([ws[1][0], ws[2][0], ws[0][0]]).view(torch.int16)
        )
    reader = RowReader()
    with pytest.raises(ValueError, match="contiguous bytes"):
        reader.read_stored(cks[0], src, 0, 3, torch.empty(2, 5, dtype=torch.bfloat16))
    reader.close()


def test_block_sums_continue_from_a_draft_only_once_accepted():
    from merging.geometry import BlockGeometry

    geometry = BlockGeometry(2)
    draft = geometry.draft()
    draft.gram += 1.0
    draft.numel += 5
    assert geometry.sums.numel == 0 and not geometry.sums.gram.any()  # a dropped draft leaves no trace
    geometry.accept(draft)
    assert geometry.sums.numel == 5 and isinstance(geometry.sums, TensorSums)
