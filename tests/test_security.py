"""Security basics: the server listens on loopback unless told otherwise, paths the app writes stay inside
MERGELAB_HOME, no checkpoint code ever runs (no trust_remote_code, no unpickling without the opt-in, and
then weights_only)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch

from mergelab_home import PathOutsideHome, inside_home, safe_name

ROOT = Path(__file__).resolve().parents[1]


# --- the server binds 127.0.0.1 -------------------------------------------------------------------------
def test_server_binds_loopback_unless_told_otherwise():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    dry = subprocess.run(["make", "-n", "app"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    serve = [line for line in dry.splitlines() if "--server.address" in line]
    assert len(serve) == 1 and re.search(r"--server\.address 127\.0\.0\.1(\s|$)", serve[0])
    told = subprocess.run(
        ["make", "-n", "app", "HOST=0.0.0.0"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "--server.address 0.0.0.0" in told  # only when the user asks for it


# --- paths chosen in the app stay inside the workspace ------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    return home


def test_paths_inside_home_are_accepted(home):
    assert inside_home("merges/ties-1") == home.resolve() / "merges" / "ties-1"
    assert inside_home(home / "merges" / "x") == home.resolve() / "merges" / "x"
    assert inside_home("merges/../merges/x") == home.resolve() / "merges" / "x"


@pytest.mark.parametrize("escape", ["../outside", "merges/../../outside", "/etc/evil", "~/evil"])
def test_dot_dot_and_absolute_paths_out_of_home_are_refused(home, escape):
    with pytest.raises(PathOutsideHome, match="outside the workspace"):
        inside_home(escape)


def test_a_symlink_out_of_home_is_refused(home, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (home / "merges").mkdir()
    (home / "merges" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathOutsideHome):
        inside_home("merges/link/model")
    with pytest.raises(PathOutsideHome):
        inside_home(home / "merges" / "link")


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "a" * 200, "..", "x\\..\\y", "a\0b"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(ValueError, match="not a usable name"):
        safe_name(bad)


def test_safe_names_pass():
    assert safe_name("ties-0.5_run+2") == "ties-0.5_run+2"


def test_the_merge_launch_refuses_an_output_outside_the_workspace(home, tmp_path, tiny_llama_family):
    from merging import ModelEntry, Recipe
    from ui import launch

    base, cks = tiny_llama_family
    recipe = Recipe(
        merge_method="task_arithmetic", base_model=str(base), models=[ModelEntry(str(cks[0]), {})]
    )

    class Runner:  # records what would be queued; the launch must refuse before it gets here
        def __init__(self) -> None:
            self.submitted: list = []

        def submit(self, kind, params, **_):
            self.submitted.append((kind, params))
            return "job"

    runner = Runner()
    (home / "merges").mkdir()
    (home / "merges" / "out").symlink_to(tmp_path, target_is_directory=True)
    for escape in ("../evil", str(tmp_path / "evil"), "merges/out/evil"):
        with pytest.raises(PathOutsideHome):
            launch.submit_merge(runner, recipe, save=True, output=escape)
    assert runner.submitted == []
    launch.submit_merge(runner, recipe, save=True, output="merges/mine")
    assert runner.submitted[0][1]["output"] == str(home.resolve() / "merges" / "mine")
    assert "/" not in Path(launch.default_output(home, "ties", name="../../etc")).name
    assert Path(launch.default_output(home, "ties", name="../../etc")).parent == home / "merges"


# --- no code from a checkpoint runs --------------------------------------------------------------------
def test_trust_remote_code_is_never_enabled_in_the_code():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in ROOT.glob("**/*.py")
        if ".venv" not in p.parts and "tests" not in p.parts
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"trust_remote_code\s*=\s*(True|[a-z_]+\b(?<!False))", line)
    ]
    assert offenders == []


def test_a_checkpoint_asking_for_remote_code_is_refused_without_running_it(tmp_path, tiny_llama_family):
    from evaluation import EvaluationError, load_model

    base, _ = tiny_llama_family
    evil = shutil.copytree(base, tmp_path / "evil")
    marker = tmp_path / "pwned"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (evil / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((evil / "config.json").read_text())
    config.update(
        model_type="mergelab_evil",
        architectures=["EvilForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        },
    )
    (evil / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvaluationError):
        load_model(evil, device="cpu")
    assert not marker.exists()


class _Payload:
    """Unpickling this runs code (writes a marker file): what a malicious .bin does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def _evil_bin_checkpoint(tmp_path, base) -> tuple[Path, Path]:
    ck = tmp_path / "pickled"
    ck.mkdir()
    shutil.copy(base / "config.json", ck / "config.json")
    for f in base.glob("tokenizer*"):
        shutil.copy(f, ck / f.name)
    marker = tmp_path / "pickle-ran"
    torch.save(
        {"model.embed_tokens.weight": torch.zeros(2, 2), "x": _Payload(marker)}, ck / "pytorch_model.bin"
    )
    return ck, marker


def test_pickled_weights_are_refused_without_the_opt_in(tmp_path, tiny_llama_family):
    from evaluation import EvaluationError, load_model
    from merging import CheckpointError, open_checkpoint

    base, _ = tiny_llama_family
    ck, marker = _evil_bin_checkpoint(tmp_path, base)
    with pytest.raises(CheckpointError, match="--allow-bin"):
        open_checkpoint(ck)
    with pytest.raises(EvaluationError, match="--allow-bin"):
        load_model(ck, device="cpu")
    assert not marker.exists()


def test_with_the_opt_in_pickles_load_weights_only(tmp_path, tiny_llama_family):
    from evaluation import EvaluationError, load_model
    from merging import CheckpointError, open_checkpoint

    base, _ = tiny_llama_family
    ck, marker = _evil_bin_checkpoint(tmp_path, base)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        open_checkpoint(ck, allow_bin=True)
    with pytest.raises(EvaluationError):
        load_model(ck, device="cpu", allow_bin=True)
    assert not marker.exists()
