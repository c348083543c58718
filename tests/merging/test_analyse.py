"""Analyse before merging: hand-computed norms, cosines and sign conflicts on tiny edited checkpoints, the
same figures a merge records, the layer ranking, bad input, and the CLI (text and JSON)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging import CompatibilityError, NonFiniteError, RecipeError, run_merge
from merging.__main__ import main
from merging.analyse import analyse_checkpoints, layer_conflicts, layer_label, representative_matrices
from merging.errors import MergeCancelled
from merging.sinks import DirectorySink
from tests.merging.helpers import recipe

DOWN = "model.layers.0.mlp.down_proj.weight"
NORM = "model.norm.weight"


@pytest.fixture(scope="module")
def edited(tiny_llama_family, tmp_path_factory):
    """A base and two checkpoints identical to it except for hand-set task vectors:
    DOWN: τ1[0,0] = 1, τ1[0,1] = -1, τ1[1,1] = 2;  τ2[0,0] = 1, τ2[0,1] = 1, τ2[1,1] = -2
    NORM: τ1[0] = 2, τ2 = 0. Everything else: τ = 0."""
    base, _ = tiny_llama_family
    root = tmp_path_factory.mktemp("edited")
    shutil.copytree(base, root / "base")
    sd = load_file(base / "model.safetensors")
    out = []
    for k, (down, norm0) in enumerate((((1.0, -1.0, 2.0), 2.0), ((1.0, 1.0, -2.0), 0.0))):
        d = shutil.copytree(base, root / f"ck{k}")
        edit = {name: t.clone() for name, t in sd.items()}
        edit[DOWN][0, 0] += down[0]
        edit[DOWN][0, 1] += down[1]
        edit[DOWN][1, 1] += down[2]
        edit[NORM][0] += norm0
        save_file(edit, d / "model.safetensors", metadata={"format": "pt"})
        out.append(d)
    return root / "base", out, sd


def test_hand_computed_figures(edited):
    base, cks, sd = edited
    result = analyse_checkpoints(str(base), [str(c) for c in cks], device="cpu", spectra=[DOWN])
    by_name = {t.name: t for t in result.stats.tensors}
    down = by_name[DOWN]
    assert down.task_norms == pytest.approx([math.sqrt(6), math.sqrt(6)], rel=1e-5)
    assert down.cosines[0][1] == pytest.approx(-2 / 3, rel=1e-5)
    # entries (0,1) and (1,1) have one positive and one negative τ; nowhere else does anything move
    assert down.sign_conflict == pytest.approx(2 / down.numel)
    assert down.delta_norm is None
    norm = by_name[NORM]
    assert norm.task_norms == pytest.approx([2.0, 0.0], rel=1e-5) and norm.sign_conflict == 0.0
    untouched = by_name["model.layers.1.mlp.up_proj.weight"]
    assert untouched.task_norms == [0.0, 0.0] and untouched.cosines == [[0.0, 0.0], [0.0, 0.0]]

    s = result.stats.summary()
    assert s["model_delta_norm"] is None
    assert s["model_task_norms"] == pytest.approx([math.sqrt(10), math.sqrt(6)], rel=1e-5)
    assert s["model_cosines"][0][1] == pytest.approx(-4 / math.sqrt(60), rel=1e-5)
    assert s["sign_conflict"] == pytest.approx(2 / sum(int(t.numel()) for t in sd.values()))

    layers = {lay.layer: lay for lay in result.layers}
    layer0 = layers["layer 00"]
    numel0 = sum(int(t.numel()) for n, t in sd.items() if n.startswith("model.layers.0."))
    assert layer0.numel == numel0 and layer0.sign_conflict == pytest.approx(2 / numel0)
    assert layer0.mean_cosine == pytest.approx(-2 / 3, rel=1e-5)
    assert layers["norm"].task_norms == pytest.approx([2.0, 0.0], rel=1e-5)
    assert layers["norm"].mean_cosine == 0.0  # a zero task vector has cosine 0 with everything
    assert layers["layer 01"].sign_conflict == 0.0
    assert result.most_conflicting(1)[0].layer == "layer 00"
    assert list(layers) == ["embed", "layer 00", "layer 01", "norm", "head"]  # network order

    # τ1 of DOWN: [[1, -1], [0, 2]] padded with zeros: singular values √(3 ± √5), then zeros
    (sp0, sp1) = result.stats.spectra
    assert (sp0.tensor, sp0.source, sp0.index, sp1.index) == (DOWN, "task", 0, 1)
    assert sp0.singular_values[:2] == pytest.approx(
        [math.sqrt(3 + math.sqrt(5)), math.sqrt(3 - math.sqrt(5))], rel=1e-4
    )
    assert result.input_fingerprints[str(base)] and len(result.input_fingerprints) == 3


def test_layer_cosine_combines_tensors_like_the_whole_model(edited):
    """Two tensors of one layer: the layer's cosine is that of the concatenated task vectors, not the
    mean of per-tensor cosines."""
    from merging.geometry import GeometryRecorder

    rec = GeometryRecorder(2)
    rec.record_task_vectors("model.layers.3.a", torch.zeros(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    rec.record_task_vectors("model.layers.3.b", torch.zeros(2), torch.tensor([[0.0, 3.0], [0.0, -1.0]]))
    (layer,) = layer_conflicts(rec.finish())
    # concatenated: τ1 = [1, 0, 0, 3], τ2 = [1, 0, 0, -1]: cos = (1 - 3) / (√10 · √2)
    assert layer.mean_cosine == pytest.approx(-2 / math.sqrt(20))
    assert layer.task_norms == pytest.approx([math.sqrt(10), math.sqrt(2)])
    assert layer.sign_conflict == pytest.approx(1 / 4)


def test_analysis_matches_what_a_merge_records(tiny_llama_family, tmp_path):
    base, cks = tiny_llama_family
    analysis = analyse_checkpoints(str(base), [str(c) for c in cks], device="cpu", spectra=None)
    merged = run_merge(recipe("task_arithmetic", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "o"))
    for a, m in zip(analysis.stats.tensors, merged.stats.tensors, strict=True):
        assert a.name == m.name
        assert a.task_norms == pytest.approx(m.task_norms, rel=1e-6)
        assert a.sign_conflict == m.sign_conflict
    for a_row, m_row in zip(analysis.stats.model_cosines, merged.stats.model_cosines, strict=True):
        assert a_row == pytest.approx(m_row, rel=1e-6, abs=1e-9)


def test_spectra_choices(tiny_llama_family):
    base, cks = tiny_llama_family
    auto = analyse_checkpoints(str(base), [str(cks[0])], device="cpu")
    tensors = sorted({s.tensor for s in auto.stats.spectra})
    assert tensors == [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ]
    assert {s.source for s in auto.stats.spectra} == {"task"}  # no merged update in an analysis
    assert analyse_checkpoints(str(base), [str(cks[0])], device="cpu", spectra=None).stats.spectra == []
    with pytest.raises(RecipeError, match="no 2-D tensor matches 'nothing.*'"):
        analyse_checkpoints(str(base), [str(cks[0])], device="cpu", spectra=["nothing.*"])
    names = ["model.layers.0.mlp.down_proj.weight", "model.layers.5.mlp.down_proj.weight", "x.weight"]
    assert representative_matrices(names, {n: 2 for n in names}) == names[:2]
    assert representative_matrices(["a", "b", "c"], {"a": 1, "b": 2, "c": 2}) == ["b", "c"]


def test_layer_labels_agree_with_the_store():
    from store import parse_layer

    for name in (
        "model.layers.7.self_attn.q_proj.weight",
        "transformer.h.11.mlp.c_fc.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ):
        layer = parse_layer(name)
        label = layer_label(name)
        assert (label == f"layer {layer:02d}") if layer is not None else not label.startswith("layer")


def test_bad_input(tiny_llama_family, odd):
    base, cks = tiny_llama_family
    with pytest.raises(RecipeError, match="needs a base"):
        analyse_checkpoints("", [str(cks[0])])
    with pytest.raises(RecipeError, match="at least one checkpoint"):
        analyse_checkpoints(str(base), [])
    with pytest.raises(RecipeError, match="listed twice"):
        analyse_checkpoints(str(base), [str(cks[0]), str(cks[0])])
    with pytest.raises(CompatibilityError):
        analyse_checkpoints(str(base), [str(odd["other_shapes"])], device="cpu")
    with pytest.raises(NonFiniteError, match="NaN"):
        analyse_checkpoints(str(base), [str(cks[0]), str(odd["nan"])], device="cpu")
    with pytest.raises(MergeCancelled):
        analyse_checkpoints(str(base), [str(cks[0])], device="cpu", should_cancel=lambda: True)


def test_added_vocabulary_is_fitted_to_the_base(tiny_llama_family, odd):
    base, cks = tiny_llama_family
    result = analyse_checkpoints(str(base), [str(cks[0]), str(odd["extra_vocab"])], device="cpu")
    embed = next(t for t in result.stats.tensors if "embed_tokens" in t.name)
    assert embed.task_norms[1] > 0 and all(math.isfinite(x) for x in embed.task_norms)


def test_cli_text_and_json(tiny_llama_family, capsys, tmp_path, monkeypatch):
    base, cks = tiny_llama_family
    monkeypatch.chdir(tmp_path)
    rc = main(["analyse", "--base", str(base), *map(str, cks), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "analysed 3 checkpoints against llama-base" in out and "nothing written" in out
    assert "pairwise cosines" in out and "layers where the checkpoints conflict most" in out
    assert "#3 llama-ft2" in out and "effective rank" in out
    assert list(tmp_path.iterdir()) == []  # nothing written

    rc = main(["analyse", "--base", str(base), str(cks[0]), str(cks[1]), "--json", "--spectra", "none"])
    out, _ = capsys.readouterr()
    doc = json.loads(out)
    assert rc == 0 and doc["checkpoints"] == [str(cks[0]), str(cks[1])]
    assert len(doc["summary"]["model_cosines"]) == 2 and doc["spectra"] == []
    assert doc["summary"]["most_conflicting"][0].startswith("layer ")
    assert len(doc["tensors"]) == 21


def test_cli_errors_are_one_line(tiny_llama_family, capsys, tmp_path):
    base, cks = tiny_llama_family
    assert main(["analyse", "--base", str(base), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as stop:
        main(["analyse", str(cks[0])])
    assert stop.value.code == 2
    assert "--base" in capsys.readouterr().err
    assert main(["analyse", "--base", str(base), str(cks[0]), "--top", "0"]) == 2


def test_nothing_under_the_inputs_changes(edited):
    base, cks, _ = edited
    before = {p: p.stat().st_mtime_ns for d in [base, *cks] for p in Path(d).iterdir()}
    analyse_checkpoints(str(base), [str(c) for c in cks], device="cpu")
    after = {p: p.stat().st_mtime_ns for d in [base, *cks] for p in Path(d).iterdir()}
    assert before == after


@pytest.mark.gpu
def test_analysis_on_the_gpu_matches_the_cpu(tiny_llama_family):
    base, cks = tiny_llama_family
    refs = [str(c) for c in cks]
    cpu = analyse_checkpoints(str(base), refs, device="cpu")
    gpu = analyse_checkpoints(str(base), refs, device="cuda")
    assert gpu.device.startswith("cuda")
    for a, b in zip(cpu.stats.tensors, gpu.stats.tensors, strict=True):
        assert a.task_norms == pytest.approx(b.task_norms, rel=1e-4)
        assert a.sign_conflict == b.sign_conflict
    for a, b in zip(cpu.stats.spectra, gpu.stats.spectra, strict=True):
        assert a.singular_values == pytest.approx(b.singular_values, rel=1e-3, abs=1e-6)
    assert [lay.layer for lay in cpu.most_conflicting()] == [lay.layer for lay in gpu.most_conflicting()]


def test_random_sign_yardstick():
    from merging.analyse import random_sign_conflict

    assert [random_sign_conflict(n) for n in (1, 2, 3, 4)] == [0.0, 0.5, 0.75, 0.875]
