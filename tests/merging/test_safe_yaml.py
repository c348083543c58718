"""Untrusted YAML: bombs, huge recipes and YAML 1.1 number strings (issue 11's limits, issue 9's numbers)."""

import subprocess
import sys
import textwrap

import pytest

from merging import Recipe, RecipeError
from merging.safe_yaml import MAX_BYTES, load_yaml

BOMB = textwrap.dedent(
    """\
    a: &a ["x","x","x","x","x","x","x","x","x","x"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
    merge_method: ties
    dtype: *i
    models:
      - model: a
    """
)


def test_alias_bomb_is_refused_in_one_line():
    with pytest.raises(RecipeError, match="expands to more than") as err:
        Recipe.from_yaml(BOMB)
    assert "\n" not in str(err.value)


def test_recursive_alias_is_refused():
    with pytest.raises(RecipeError, match="recursive alias"):
        load_yaml("a: &a [1, *a]\n")


def test_size_limit_is_checked_before_parsing(tmp_path):
    big = "merge_method: linear\nmodels:\n" + "  - model: m\n    parameters: {weight: 1}\n" * 40_000
    assert len(big) > MAX_BYTES
    with pytest.raises(RecipeError, match="over the 1024 KiB limit"):
        Recipe.from_yaml(big)
    f = tmp_path / "big.yml"
    f.write_text(big)
    with pytest.raises(RecipeError, match="over the 1024 KiB limit"):
        Recipe.from_yaml(f)


def test_model_count_limit():
    text = "merge_method: linear\nmodels:\n" + "  - model: m\n" * 300
    with pytest.raises(RecipeError, match="300 models, over the limit of 256"):
        Recipe.from_yaml(text)


def test_yaml11_exponent_numbers_are_floats():
    data = load_yaml("a: 1e-5\nb: 5E3\nc: -2e+2\nd: 1.5e-3\ne: 12\nf: model-1e5\ng: '1e-5'\n")
    assert data == {"a": 1e-5, "b": 5000.0, "c": -200.0, "d": 1.5e-3, "e": 12, "f": "model-1e5", "g": "1e-5"}
    r = Recipe.from_yaml(
        "merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1e-5, density: '0.5'}\n"
    )
    assert r.models[0].parameters == {"weight": 1e-5, "density": 0.5}


@pytest.mark.parametrize("case", ["bomb", "50mb"])
def test_cli_refuses_bomb_and_huge_recipe_fast_and_small(tmp_path, case):
    """Issue 11: one clear error within 5 s using under 1 GiB, through the real CLI."""
    cfg = tmp_path / "r.yml"
    if case == "bomb":
        cfg.write_text(BOMB)
    else:
        line = "  - model: /nowhere/model-0000\n    parameters:\n      weight: 0.5\n"
        with open(cfg, "w") as fh:
            fh.write("merge_method: model_stock\nbase_model: /nowhere/base\nmodels:\n")
            fh.write(line * (50_000_000 // len(line)))
    # the clock starts once the interpreter and torch are loaded: the bar is the refusal, not start-up
    probe = (
        "import sys, time; from merging.__main__ import main; t0 = time.monotonic();"
        "code = main(sys.argv[1:]); print(time.monotonic() - t0, file=sys.stderr);"
        "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'));"
        "print(hwm.split()[1], file=sys.stderr); sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(cfg), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert lines[0].startswith("error: ") and ("expands to more than" in lines[0] or "KiB limit" in lines[0])
    # VmHWM, in KiB: this process's own peak. (ru_maxrss would not do: Linux carries the forking parent's
    # peak across exec, so a large pytest process would be counted.)
    assert int(lines[-1]) < 1024 * 1024
    assert float(lines[-2]) < 5
    assert not (tmp_path / "out").exists()
