"""The CLI in-process (`main(argv)`, the same code `python -m merging` runs) plus one real subprocess."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import merging.engine
from merging.__main__ import main
from tests.merging.helpers import recipe

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "recipe.yml"
    f.write_text(text)
    return f


def _ties(base, models, **kw) -> str:
    return recipe("ties", base, models, {"weight": 1.0}, **kw).to_yaml()


def test_success_prints_path_and_summary(tmp_path, capsys, tiny_llama_family):
    base, cks = tiny_llama_family
    cfg = _write(tmp_path, _ties(base, cks))
    rc = main([str(cfg), str(tmp_path / "out"), "--device", "cpu", "--seed", "5", "--out-dtype", "bfloat16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == str((tmp_path / "out").absolute())
    assert "ties: 21 tensors" in lines[1] and "sign conflict" in lines[2] and "seed 5" in lines[3]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.bfloat16
    assert "seed: 5" in (tmp_path / "out" / "merge_config.yml").read_text()


def test_list_methods(capsys):
    assert main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("linear: ")
    assert "\nties: " in out and "\ndare_ties: " in out and "randomized (uses seed)" in out
    assert "    density (float, per-model, default 1.0, range [0.0, 1.0]" in out


def _cases(fam, odd, qwen):
    base, cks = fam
    return {
        "other shapes": (_ties(base, [cks[0], odd["other_shapes"]]), [], "has shape (32, 48), base"),
        "missing tensor": (
            _ties(base, [cks[0], odd["missing"]]),
            [],
            "has no tensor 'model.layers.0.self_attn.v_proj",
        ),
        "other architecture": (_ties(base, [cks[0], qwen[1][0]]), [], "Qwen3ForCausalLM, base"),
        "truncated": (_ties(base, [odd["truncated"]]), [], "truncated safetensors file"),
        "corrupt": (_ties(base, [odd["corrupt"]]), [], "corrupt safetensors file"),
        "nan": (_ties(base, [odd["nan"]]), [], "holds 1 NaN/Inf values"),
        "pickle only": (_ties(base, [odd["bin"]]), [], "only pickled .bin weights"),
        "missing path": (_ties(base, [base.parent / "nowhere"]), [], "not found: no such directory"),
        "unknown method": (
            f"merge_method: smash\nmodels:\n  - model: {cks[0]}\n",
            [],
            "unknown merge method",
        ),
        "unknown parameter": (
            recipe("ties", base, cks, {"weight": 1.0, "dens": 0.5}).to_yaml(),
            [],
            "has no parameter 'dens'",
        ),
        "out of range": (
            recipe("ties", base, cks, {"weight": 1.0, "density": 2.0}).to_yaml(),
            [],
            "outside its allowed range",
        ),
        "broken yaml": ("merge_method: ties\nmodels: [\n", [], "broken YAML in recipe at line"),
        "bad device": (_ties(base, cks), ["--device", "tpu"], "device"),
        "bad out dtype": (_ties(base, cks), ["--out-dtype", "int4"], "out_dtype must be one of"),
    }


CASES = [
    "other shapes",
    "missing tensor",
    "other architecture",
    "truncated",
    "corrupt",
    "nan",
    "pickle only",
    "missing path",
    "unknown method",
    "unknown parameter",
    "out of range",
    "broken yaml",
    "bad device",
    "bad out dtype",
]


@pytest.mark.parametrize("case", CASES)
def test_every_refusal_is_exit_2_and_one_line(
    case, tmp_path, capsys, tiny_llama_family, odd, tiny_qwen3_family
):
    text, extra, message = _cases(tiny_llama_family, odd, tiny_qwen3_family)[case]
    cfg = _write(tmp_path, text)
    rc = main([str(cfg), str(tmp_path / "out"), "--quiet", *extra])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]  # nothing written


def test_existing_output_directory(tmp_path, capsys, tiny_llama_family):
    base, cks = tiny_llama_family
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep")
    rc = main([str(_write(tmp_path, _ties(base, cks))), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already exists and is not empty" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["precious.txt"]


def test_pickle_loads_with_allow_bin(tmp_path, capsys, tiny_llama_family, odd):
    base, cks = tiny_llama_family
    cfg = _write(tmp_path, _ties(base, [cks[0], odd["bin"]]))
    assert main([str(cfg), str(tmp_path / "out"), "--allow-bin", "--quiet"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_usage_errors_are_one_line(capsys):
    assert main(["only-config.yml"]) == 2
    assert capsys.readouterr().err.startswith("error: give CONFIG.yml and OUT_DIR")
    with pytest.raises(SystemExit) as exc:
        main(["a.yml", "out", "--seed", "x"])
    assert exc.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_ctrl_c_aborts_cleanly_with_130(tmp_path, capsys, monkeypatch, tiny_llama_family):
    """A real SIGINT arrives mid-merge (after the third tensor): the run stops between tensors."""
    base, cks = tiny_llama_family
    original = merging.engine.GeometryRecorder.record_stack
    calls = []

    def record_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(merging.engine.GeometryRecorder, "record_stack", record_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)
    rc = main([str(_write(tmp_path, _ties(base, cks))), str(tmp_path / "out"), "--quiet"])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert 3 <= len(calls) < 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]
    assert signal.getsignal(signal.SIGINT) is handler  # the CLI restores the caller's handler


@pytest.mark.slow
def test_python_dash_m_merging(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    cfg = _write(tmp_path, _ties(base, cks))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", "merging", str(cfg), str(tmp_path / "out"), "--device", "cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == str((tmp_path / "out").absolute())
    again = subprocess.run(
        [sys.executable, "-m", "merging", str(cfg), str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2
    assert again.stderr.startswith("error: output directory") and again.stderr.count("\n") == 1
