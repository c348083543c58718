import pytest
import torch

from merging import CompatibilityError, check_compatibility, open_checkpoint
from merging.compat import TensorSource, adjust_rows


def _report(base, *others):
    return check_compatibility(open_checkpoint(base), [open_checkpoint(p) for p in others])


def test_family_is_compatible(tiny_llama_family):
    base, cks = tiny_llama_family
    report = _report(base, *cks)
    assert report.ok and report.issues == []
    assert len(report.tensor_names) == 21
    assert all(src[n] == TensorSource(n) for src in report.sources for n in report.tensor_names)
    assert [r["status"] for r in report.matrix()] == ["ok", "ok", "ok"]
    report.raise_if_refused()


def test_other_shapes_refused_naming_checkpoint_tensor_and_shapes(tiny_llama_family, odd):
    base, cks = tiny_llama_family
    report = _report(base, cks[0], odd["other_shapes"])
    assert not report.ok
    assert {i.index for i in report.refusals} == {1}
    up = next(i for i in report.refusals if i.tensor == "model.layers.0.mlp.up_proj.weight")
    assert (up.code, up.base_shape, up.shape) == ("shape", (64, 32), (48, 32))
    assert str(odd["other_shapes"]) in up.message and "(48, 32)" in up.message and "(64, 32)" in up.message
    # gate, up, down in each of 2 layers
    assert len(report.refusals) == 6
    with pytest.raises(CompatibilityError, match=r"\(and 5 more refusals\)"):
        report.raise_if_refused()
    assert report.matrix()[1]["status"] == "refused" and report.matrix()[1]["refusals"] == 6


def test_missing_tensor_refused(tiny_llama_family, odd):
    report = _report(tiny_llama_family[0], odd["missing"])
    [issue] = report.issues
    assert (issue.severity, issue.code, issue.tensor) == (
        "refusal",
        "missing_tensor",
        "model.layers.0.self_attn.v_proj.weight",
    )


def test_extra_tensor_refused(tiny_llama_family, odd):
    # the base lacks a tensor the checkpoint has: other tensor set, seen from the other side
    report = _report(odd["missing"], tiny_llama_family[0])
    [issue] = report.issues
    assert (issue.code, issue.tensor, issue.shape) == (
        "extra_tensor",
        "model.layers.0.self_attn.v_proj.weight",
        (16, 32),
    )


def test_other_architecture_refused_once(tiny_llama_family, tiny_qwen3_family):
    report = _report(tiny_llama_family[0], tiny_qwen3_family[1][0])
    [issue] = report.issues
    assert issue.code == "architecture" and issue.tensor is None
    assert "Qwen3ForCausalLM" in issue.message and "LlamaForCausalLM" in issue.message


def test_added_vocabulary_is_an_adjustment(tiny_llama_family, odd):
    report = _report(tiny_llama_family[0], odd["extra_vocab"])
    assert report.ok
    adj = {i.tensor: i for i in report.adjustments}
    assert set(adj) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert adj["lm_head.weight"].shape == (57, 32) and adj["lm_head.weight"].base_shape == (49, 32)
    assert "cut to the base's 49" in adj["lm_head.weight"].message
    assert report.sources[0]["lm_head.weight"] == TensorSource("lm_head.weight", 49)
    assert report.matrix()[0]["status"] == "adjusted"


def test_tied_and_untied_heads(tiny_llama_family, odd):
    # untied base, tied checkpoint: the checkpoint's embedding stands in for its head
    report = _report(tiny_llama_family[0], odd["tied_ft0"])
    assert report.ok
    assert report.sources[0]["lm_head.weight"] == TensorSource("model.embed_tokens.weight")
    assert [i.code for i in report.adjustments] == ["tied_head"]
    # tied base, untied checkpoint: the output stays tied, the head is not used
    report = _report(odd["tied_base"], tiny_llama_family[1][0])
    assert report.ok and "lm_head.weight" not in report.tensor_names
    assert [i.code for i in report.adjustments] == ["dropped_head"]


def test_adjust_rows_cuts_and_zero_pads():
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(adjust_rows(t, 2), torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(adjust_rows(t, 4), torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [0.0, 0.0]]))
    assert adjust_rows(t, 3) is t


def test_unknown_vocab_policy(tiny_llama_family):
    base = open_checkpoint(tiny_llama_family[0])
    with pytest.raises(CompatibilityError, match="unknown vocab_policy 'union'"):
        check_compatibility(base, [base], vocab_policy="union")
