import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from merging import (
    DeviceError,
    DirectorySink,
    MergeCancelled,
    NonFiniteError,
    OutputExistsError,
    RecipeError,
    open_checkpoint,
    run_merge,
    tensor_seed,
)
from tests.merging.helpers import leftovers, recipe, weights


def _forward_is_finite(path) -> bool:
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7, 8]])).logits
    return bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("family", ["tiny_llama_family", "tiny_qwen3_family"])
def test_task_arithmetic_whole_merge_equals_hand_sum(request, tmp_path, family):
    base, cks = request.getfixturevalue(family)
    r = recipe("task_arithmetic", base, cks, {"weight": 0.5}, parameters={"lambda": 0.8})
    result = run_merge(r, DirectorySink(tmp_path / "out"), device="cpu")
    assert result.output_path == (tmp_path / "out").absolute()
    out = weights(result.output_path)
    b = load_file(base / "model.safetensors")
    ms = [load_file(c / "model.safetensors") for c in cks]
    assert set(out) == set(b)
    for name in b:
        expected = b[name] + 0.8 * sum(0.5 * (m[name] - b[name]) for m in ms)
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-6)
    assert _forward_is_finite(result.output_path)
    assert result.bytes_read == 4 * sum(t.numel() * 4 for t in b.values())
    assert result.bytes_written == sum(t.numel() * 4 for t in b.values())
    assert result.input_fingerprints == {str(p): open_checkpoint(p).fingerprint for p in [base, *cks]}
    # the whole-model figure: ‖θ_merged − θ0‖ over every parameter
    delta = torch.cat([(out[n] - b[n]).flatten() for n in b]).double().norm()
    assert result.stats.model_delta_norm == pytest.approx(float(delta), rel=1e-5)


def test_linear_without_base_averages_weights(tmp_path, tiny_llama_family):
    _, cks = tiny_llama_family
    result = run_merge(
        recipe("linear", None, cks[:2], {"weight": 1.0}), DirectorySink(tmp_path / "o"), device="cpu"
    )
    out = weights(result.output_path)
    a, b = (load_file(c / "model.safetensors") for c in cks[:2])
    for name in a:
        torch.testing.assert_close(out[name], (a[name] + b[name]) / 2)
    # stats are relative to the reference (the first model): its task vector is zero
    assert result.stats.model_task_norms[0] == 0.0 and result.stats.model_task_norms[1] > 0


def test_added_vocabulary_merged_under_base_vocabulary(tmp_path, tiny_llama_family, odd):
    base, cks = tiny_llama_family
    r = recipe("task_arithmetic", base, [cks[0], odd["extra_vocab"]], {"weight": 1.0})
    result = run_merge(r, DirectorySink(tmp_path / "o"), device="cpu")
    out, b = weights(result.output_path), load_file(base / "model.safetensors")
    ev, c0 = load_file(odd["extra_vocab"] / "model.safetensors"), load_file(cks[0] / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert out[name].shape == (49, 32)
        expected = b[name] + (c0[name] - b[name]) + (ev[name][:49] - b[name])
        torch.testing.assert_close(out[name], expected)
    assert json.loads((result.output_path / "config.json").read_text())["vocab_size"] == 49
    assert {i.code for i in result.compat.adjustments} == {"vocab_rows"}
    assert _forward_is_finite(result.output_path)


def test_tied_family_stays_tied(tmp_path, odd):
    r = recipe("ties", odd["tied_base"], [odd["tied_ft0"], odd["tied_ft1"]], {"weight": 1.0, "density": 0.5})
    result = run_merge(r, DirectorySink(tmp_path / "o"), device="cpu")
    assert "lm_head.weight" not in weights(result.output_path)
    model = AutoModelForCausalLM.from_pretrained(result.output_path)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert _forward_is_finite(result.output_path)


def test_nan_refused_naming_tensor_and_checkpoint(tmp_path, tiny_llama_family, odd):
    base, cks = tiny_llama_family
    with pytest.raises(NonFiniteError, match=r"'.*nan'.*model\.layers\.1\.mlp\.up_proj\.weight.*1 NaN/Inf"):
        run_merge(
            recipe("task_arithmetic", base, [cks[0], odd["nan"]], {"weight": 1.0}),
            DirectorySink(tmp_path / "o"),
        )
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_refusals_happen_before_anything_is_written(tmp_path, tiny_llama_family, odd):
    base, cks = tiny_llama_family
    with pytest.raises(Exception, match="has shape"):
        run_merge(
            recipe("ties", base, [cks[0], odd["other_shapes"]], {"weight": 1.0}),
            DirectorySink(tmp_path / "a"),
        )
    with pytest.raises(RecipeError, match="spectra: no 2-D tensor matches 'typo'"):
        run_merge(recipe("ties", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "b"), spectra=["typo"])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists and is not empty"):
        DirectorySink(tmp_path / "c")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        run_merge(recipe("ties", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "o"), device="cuda")


def test_cancellation_leaves_nothing(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    calls = []

    def cancel_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(MergeCancelled):
        run_merge(
            recipe("ties", base, cks, {"weight": 1.0}),
            DirectorySink(tmp_path / "nested" / "o"),
            should_cancel=cancel_after_three,
            device="cpu",
        )
    assert len(calls) == 4
    assert list(tmp_path.iterdir()) == []  # no output, no temp dir, not even the parent it created


def test_progress_is_monotone_and_ends_at_total(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    seen = []
    run_merge(
        recipe("ties", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "o"), on_progress=seen.append
    )
    assert [p.tensors_done for p in seen] == list(range(1, 22))
    assert all(a.bytes_done < b.bytes_done for a, b in zip(seen, seen[1:], strict=False))
    last = seen[-1]
    assert (last.tensors_done, last.bytes_done) == (last.tensors_total, last.bytes_total)
    assert last.fraction == 1.0 and len({p.tensor_name for p in seen}) == 21


def test_dare_with_seed_is_reproducible(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family

    def merge(out, seed):
        r = recipe("dare_ties", base, cks, {"weight": 1.0, "density": 0.3}, seed=seed)
        return run_merge(r, DirectorySink(tmp_path / out), device="cpu")

    a, b, c = merge("a", 11), merge("b", 11), merge("c", 12)
    wa, wb, wc = weights(a.output_path), weights(b.output_path), weights(c.output_path)
    name = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert not torch.equal(wa[name], wc[name])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    # seed drawn when absent, recorded in the result and in merge_config.yml, so the output can be remade
    d = merge("d", None)
    assert d.recipe.seed is not None
    assert f"seed: {d.recipe.seed}" in (d.output_path / "merge_config.yml").read_text()
    again = merge("e", d.recipe.seed)
    assert torch.equal(weights(d.output_path)[name], weights(again.output_path)[name])


def test_fingerprint_ignores_seed_for_deterministic_methods(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    fps = [
        run_merge(
            recipe("ties", base, cks, {"weight": 1.0}, seed=s), DirectorySink(tmp_path / str(s))
        ).fingerprint
        for s in (1, 2)
    ]
    explicit = run_merge(
        recipe("ties", base, cks, {"weight": 1.0, "density": 1.0}), DirectorySink(tmp_path / "x")
    ).fingerprint  # the default density spelled out: same merge, same fingerprint
    other = run_merge(recipe("ties", base, cks, {"weight": 0.5}), DirectorySink(tmp_path / "y")).fingerprint
    assert fps[0] == fps[1] == explicit != other


def test_tensor_seed_depends_on_name_only():
    assert tensor_seed(5, "a.weight") == tensor_seed(5, "a.weight")
    assert tensor_seed(5, "a.weight") != tensor_seed(5, "b.weight")
    assert tensor_seed(5, "a.weight") != tensor_seed(6, "a.weight")


def test_out_dtype_and_spectra(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    r = recipe("ties", base, cks, {"weight": 1.0}, out_dtype="bfloat16")
    result = run_merge(r, DirectorySink(tmp_path / "o"), spectra=["*.q_proj.weight"], device="cpu")
    assert {t.dtype for t in weights(result.output_path).values()} == {torch.bfloat16}
    assert json.loads((result.output_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert {(s.tensor, s.source) for s in result.stats.spectra} == {
        (f"model.layers.{i}.self_attn.q_proj.weight", src) for i in (0, 1) for src in ("task", "delta")
    }
    assert len(result.stats.spectra) == 2 * (3 + 1)


def test_given_checkpoints_are_used_and_left_open(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    opened = {str(p): open_checkpoint(p) for p in [base, *cks]}
    result = run_merge(
        recipe("ties", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "o"), checkpoints=opened
    )
    assert result.input_fingerprints[str(base)] == opened[str(base)].fingerprint
    assert opened[str(base)].read("model.norm.weight").shape == (32,)


def test_pickle_checkpoint_merges_only_when_allowed(tmp_path, tiny_llama_family, odd):
    base, cks = tiny_llama_family
    r = recipe("task_arithmetic", base, [cks[0], odd["bin"]], {"weight": 1.0})
    with pytest.raises(Exception, match="--allow-bin"):
        run_merge(r, DirectorySink(tmp_path / "a"))
    with_bin = weights(run_merge(r, DirectorySink(tmp_path / "b"), allow_bin=True).output_path)
    r2 = recipe("task_arithmetic", base, [cks[0], cks[1]], {"weight": 1.0})  # the .bin holds cks[1]'s weights
    plain = weights(run_merge(r2, DirectorySink(tmp_path / "c")).output_path)
    assert all(torch.equal(with_bin[n], plain[n]) for n in plain)


@pytest.mark.gpu
def test_cuda_matches_cpu_for_deterministic_methods(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    r = recipe("ties", base, cks, {"weight": 0.6, "density": 0.5})
    cpu = run_merge(r, DirectorySink(tmp_path / "cpu"), device="cpu")
    gpu = run_merge(r, DirectorySink(tmp_path / "gpu"), device="cuda", spectra="all")
    assert gpu.device.startswith("cuda") and gpu.fingerprint == cpu.fingerprint
    a, b = weights(cpu.output_path), weights(gpu.output_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert gpu.stats.model_delta_norm == pytest.approx(cpu.stats.model_delta_norm, rel=1e-4)


@pytest.mark.gpu
def test_cuda_dare_reproducible(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    r = recipe("dare_ties", base, cks, {"weight": 1.0, "density": 0.3}, seed=3)
    a = weights(run_merge(r, DirectorySink(tmp_path / "a"), device="cuda").output_path)
    b = weights(run_merge(r, DirectorySink(tmp_path / "b"), device="cuda").output_path)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_kept_mass_tells_task_arithmetic_from_ties(tmp_path, tiny_llama_family):
    """TA keeps every entry and resolves each conflict by the sum; TIES at density 0.1 leaves most of the task
    vectors' mass at the base and drops conflicts. ⟨Δ, τ_i⟩ matches a hand computation on the output."""
    base, cks = tiny_llama_family
    ta = run_merge(recipe("task_arithmetic", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "ta"))
    ties = run_merge(
        recipe("ties", base, cks, {"weight": 1.0, "density": 0.1}), DirectorySink(tmp_path / "ties")
    )
    ta_sum, ties_sum = ta.stats.summary(), ties.stats.summary()
    assert ta_sum["mass_dropped"] == pytest.approx(0.0, abs=1e-6)
    assert ta_sum["conflict_summed"] == pytest.approx(1.0) and ta_sum["conflict_dropped"] == 0.0
    assert ties_sum["mass_dropped"] > 0.5 and ties_sum["conflict_dropped"] > 0.5
    out, b = weights(ta.output_path), load_file(base / "model.safetensors")
    ms = [load_file(c / "model.safetensors") for c in cks]
    for i, m in enumerate(ms):
        dot = sum(float(((out[n] - b[n]).double() * (m[n] - b[n]).double()).sum()) for n in b)
        assert ta.stats.model_task_dots[i] == pytest.approx(dot, rel=1e-4)


@pytest.mark.gpu
def test_cuda_records_the_same_kept_mass_as_cpu(tmp_path, tiny_llama_family):
    """Compare's kept/dropped figures (mass dropped, conflicts resolved, ⟨Δ, τ_i⟩): CUDA equals CPU."""
    base, cks = tiny_llama_family
    r = recipe("ties", base, cks, {"weight": 1.0, "density": 0.1})
    cpu = run_merge(r, DirectorySink(tmp_path / "cpu"), device="cpu").stats.summary()
    gpu = run_merge(r, DirectorySink(tmp_path / "gpu"), device="cuda").stats.summary()
    for key in ("mass_dropped", "conflict_dropped", "conflict_summed"):
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-3), key
    assert gpu["model_task_dots"] == pytest.approx(cpu["model_task_dots"], rel=1e-3)
