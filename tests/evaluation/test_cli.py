"""`python -m evaluation`: table and JSON output, cache reuse, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest

from evaluation.cli import main
from tests.tiny_models import make_base


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("cli") / "base", seed=5)


@pytest.mark.slow
def test_json_then_table_from_cache(base_dir, zoo_root, capsys):
    assert (
        main([str(base_dir), "--suite", "zoo", "--zoo-root", str(zoo_root), "--json", "--batch-size", "4"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in out["rows"]] == ["zoo_add", "zoo_letters"]
    assert out["aggregate"] == pytest.approx(sum(r["value"] for r in out["rows"]) / 2)
    assert main([str(base_dir), "--suite", "zoo", "--zoo-root", str(zoo_root), "--limit", "9"]) == 0
    table = capsys.readouterr().out
    assert "zoo_letters" in table and "aggregate" in table
    agg_line = next(line for line in table.splitlines() if line.startswith("aggregate"))
    assert f"{100 * out['aggregate']:.2f}" in agg_line  # limit 9 covers every item: same numbers


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--suite", "zoo", "--zoo-root", "/nonexistent-zoo"],
            "zoo task folder /nonexistent-zoo/tasks not found",
        ),
        (["--suite", ","], "the suite is empty"),
        (["--suite", "zoo", "--batch-size", "0"], "--batch-size must be a positive integer"),
    ],
)
def test_user_errors_exit_2_with_one_line(base_dir, zoo_root, capsys, args, message):
    if "--zoo-root" not in args:
        args += ["--zoo-root", str(zoo_root)]
    assert main([str(base_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_model_without_tokenizer_exits_2(base_dir, zoo_root, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(base_dir, bare)
    for f in bare.glob("*token*"):
        f.unlink()
    assert main([str(bare), "--suite", "zoo", "--zoo-root", str(zoo_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no usable tokenizer" in err and "\n" not in err
