"""The controller library (issue 4): contract, CMC against the published figures, and measured
β-monotonicity of cost for every built-in on every reference store."""

from __future__ import annotations

import csv

import pytest

from autotts import controller as ctl
from autotts.evaluate import EvalProtocol, evaluate
from autotts.metrics import monotonicity_violations
from tests.conftest import REFERENCE_FILES, branch, make_store, reference_csv, reference_file

GRID = [round(0.1 * i, 1) for i in range(11)]


@pytest.mark.parametrize("name", ctl.builtin_names())
def test_builtin_meets_the_contract(name):
    spec = ctl.load(name)
    assert spec.name == name  # the file name is the built-in name
    doc = (spec.cls.__doc__ or "") + (__import__("inspect").getmodule(spec.cls).__doc__ or "")
    assert len(doc.strip()) > 80, "the idea belongs in the docstring"
    for beta in GRID:
        knobs = spec.schedule(beta)
        assert set(knobs) <= set(spec.knob_names())
        spec.make(knobs)
    # Out-of-range β is clamped, not an error.
    assert spec.schedule(-1.0) == spec.schedule(0.0) and spec.schedule(2.0) == spec.schedule(1.0)


@pytest.mark.parametrize("name", ctl.builtin_names())
def test_builtin_runs_on_a_tiny_store(name):
    store = make_store(
        [
            ("A", [branch(["x", "A", "A"], 31, "A"), branch(["B"], 12, "B"), branch([], 4, "A")] * 3),
            ("B", [branch(["B", "B"], 25, "B"), branch(["C", "C", "C"], 33, "C")] * 4),
        ]
    )
    result = evaluate(name, [store], [0.0, 0.5, 1.0], EvalProtocol(draws=3))
    assert [r["errors"] for r in result.rows] == [0, 0, 0]


def _cmc_rows():
    try:
        with open(reference_csv(), newline="") as f:
            return [r for r in csv.DictReader(f) if r["controller"] == "cmc"]
    except BaseException:
        return []


@pytest.mark.reference
@pytest.mark.parametrize("model_bench", sorted({f"{r['model']}/{r['benchmark']}" for r in _cmc_rows()})
                         or ["missing"])
def test_cmc_is_close_to_the_published_figures(model_bench):
    rows = [r for r in _cmc_rows() if f"{r['model']}/{r['benchmark']}" == model_bench]
    if not rows:
        reference_csv()  # fails under CI, skips otherwise
    store = reference_file(f"{model_bench}.json")
    betas = [float(r["config"].split("=")[1]) for r in rows]
    result = evaluate("cmc", [store], betas, EvalProtocol(draws=100))
    for ref, got in zip(rows, result.rows, strict=True):
        assert abs(got["accuracy"] - float(ref["accuracy_pct"])) <= 1.5
        assert abs(got["tokens"] / float(ref["tokens_mean"]) - 1) <= 0.10


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("name", ctl.builtin_names())
def test_cost_is_monotone_in_beta_on_every_reference_store(name):
    stores = [reference_file(f) for f in REFERENCE_FILES]
    result = evaluate(name, stores, GRID, EvalProtocol(draws=10))
    bad = monotonicity_violations(result.rows)
    assert not bad, "; ".join(v.describe() for v in bad)


def test_monotonicity_check_flags_a_drop():
    rows = [
        {"store": "s", "controller": "c", "beta": 0.0, "tokens": 100.0, "tokens_se": 1.0},
        {"store": "s", "controller": "c", "beta": 0.5, "tokens": 99.0, "tokens_se": 1.0},
        {"store": "s", "controller": "c", "beta": 1.0, "tokens": 90.0, "tokens_se": 1.0},
    ]
    bad = monotonicity_violations(rows)
    assert [(v.beta_low, v.beta_high) for v in bad] == [(0.5, 1.0)]
