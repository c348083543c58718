"""Estimates before a merge (issue 10): from headers and a calibration, with the warnings users need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from merging import ModelEntry, Recipe
from merging.budget import BASE_OVERHEAD
from merging.estimate import DEFAULTS, estimate_recipe, load_calibration

ROOT = Path(__file__).resolve().parents[2]


def _recipe(method, base, cks, **per):
    return Recipe(method, str(base), [ModelEntry(str(c), dict(per)) for c in cks], {})


def test_estimate_grows_with_the_work_and_stays_within_the_budget(tiny_llama_family):
    base, cks = tiny_llama_family
    ta = estimate_recipe(_recipe("task_arithmetic", base, cks, weight=1.0), device="cpu", max_memory="4GiB")
    one = estimate_recipe(
        _recipe("task_arithmetic", base, cks[:1], weight=1.0), device="cpu", max_memory="4GiB"
    )
    assert 0 < one.seconds < ta.seconds and ta.peak_bytes <= ta.budget == 4 << 30
    assert ta.warnings == [] and "peak memory about" in ta.line()


def test_hours_of_svds_on_a_cpu_are_warned(tiny_llama_family):
    base, cks = tiny_llama_family
    slow = {**DEFAULTS, "decomposition_s_per_r3": 1.0}  # a machine where one tiny SVD takes a day
    est = estimate_recipe(_recipe("tsvm", base, cks), device="cpu", max_memory="4GiB", calibration=slow)
    assert est.parts["SVDs"] > 3600 and any("tsvm on the CPU needs SVDs" in w for w in est.warnings)
    fast = estimate_recipe(_recipe("tsvm", base, cks), device="cpu", max_memory="4GiB")
    assert not fast.warnings


def test_decompositions_are_counted_once_not_again_per_element(tiny_llama_family):
    """A calibration that timed a subspace method's merge per element (decompositions included, as files
    written before the decomposition rate existed did) must not add them a second time."""
    base, cks = tiny_llama_family
    inflated = {**DEFAULTS, "method_ns_per_elem": {**DEFAULTS["method_ns_per_elem"], "tsvm": 1e9}}
    plain = estimate_recipe(_recipe("tsvm", base, cks), device="cpu", max_memory="4GiB")
    again = estimate_recipe(_recipe("tsvm", base, cks), device="cpu", max_memory="4GiB", calibration=inflated)
    assert again.seconds == plain.seconds and plain.parts["SVDs"] > 0


def test_matrices_on_tensor_lanes_are_priced_two_at_a_time(tiny_llama_family, monkeypatch, two_threads):
    import merging.budget as budget

    base, cks = tiny_llama_family
    lanes = estimate_recipe(_recipe("iso_cts", base, cks), device="cpu", max_memory="4GiB")
    monkeypatch.setattr(budget, "plan_lanes", lambda plan, spec: plan)
    alone = estimate_recipe(_recipe("iso_cts", base, cks), device="cpu", max_memory="4GiB")
    assert lanes.parts["SVDs"] == pytest.approx(alone.parts["SVDs"] / 2)
    assert lanes.peak_bytes > alone.peak_bytes  # what the lanes hold beside one tensor


def test_a_budget_that_cannot_fit_is_a_warning_not_a_crash(tiny_llama_family):
    base, cks = tiny_llama_family
    est = estimate_recipe(
        _recipe("ties", base, cks, weight=1.0, density=0.5), device="cpu", max_memory=BASE_OVERHEAD + 16
    )
    assert est.warnings and est.warnings[0].startswith("cannot fit: memory budget")


def test_calibration_file_overrides_defaults_and_bad_files_fall_back(tmp_path):
    good = tmp_path / "cal.json"
    good.write_text(json.dumps({"read_bytes_per_s": 1e9, "method_ns_per_elem": {"ties": 9.0}, "junk": 1}))
    cal = load_calibration(good)
    assert cal["read_bytes_per_s"] == 1e9 and cal["method_ns_per_elem"]["ties"] == 9.0
    assert cal["method_ns_per_elem"]["default"] == DEFAULTS["method_ns_per_elem"]["default"]
    (tmp_path / "bad.json").write_text("{nope")
    assert load_calibration(tmp_path / "bad.json") == DEFAULTS


@pytest.mark.slow
def test_cli_prints_the_estimate_on_stderr(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    cfg = tmp_path / "r.yml"
    cfg.write_text(_recipe("task_arithmetic", base, cks, weight=1.0).to_yaml())
    proc = subprocess.run(
        [sys.executable, "-m", "merging", str(cfg), str(tmp_path / "o"), "--quiet", "--estimate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "estimate on cpu: about" in proc.stderr and "peak memory about" in proc.stderr
