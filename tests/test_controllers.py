"""The controller library (issue 4): contract, CMC against the published figures, and measured
β-monotonicity of cost for every built-in on every reference store."""

from __future__ import annotations

import csv
import inspect
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import betainc

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


def _asc_module():
    return inspect.getmodule(ctl.load("asc").cls)


def _exact_confidences(size: int) -> dict[tuple[int, int], float]:
    """P(Bin(v1 + v2 + 1, 1/2) <= v1) for v1 >= v2 below size, from integers, rounded once."""
    out, row = {}, [1]
    for n in range(1, 2 * size):
        row = [1, *map(sum, itertools.pairwise(row)), 1]
        for v1, tail in enumerate(itertools.accumulate(row[:min(n, size)])):
            if n - 1 - v1 <= v1:
                out[(v1, n - 1 - v1)] = tail / (1 << n)
    return out


def test_asc_stop_rule_is_scipys_within_its_band():
    """asc's run_batch decides without scipy where the exact binomial tail is more than BAND
    from the threshold: that is sound only while scipy's betainc stays far closer than BAND to
    the exact value, for every count pair it is used for."""
    m = _asc_module()
    exact = _exact_confidences(m.EXACT_UP_TO)
    v1, v2 = (np.array(x, dtype=float) for x in zip(*exact, strict=True))
    scipy_conf = 1.0 - betainc(v1 + 1, v2 + 1, 0.5)
    worst = float(np.max(np.abs(scipy_conf - np.array(list(exact.values())))))
    assert worst < m.BAND / 100, worst


def test_asc_stop_table_decides_as_scipy():
    m = _asc_module()
    size = 80
    v1, v2 = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    upper = v2 <= v1
    conf = 1.0 - betainc(v1 + 1.0, v2 + 1.0, 0.5)
    # the published threshold, the β schedule's, edge values, and thresholds equal to (or one
    # float away from) scipy's own confidences, where only scipy's rounding decides
    spec = ctl.load("asc")
    thresholds = [0.95, 0.0, 1.0, 0.5, float("inf"), float("-inf"), float("nan")]
    thresholds += [spec.schedule(b)["threshold"] for b in GRID]
    picks = conf[upper & (conf > 0.5) & (conf < 1.0)][::97]
    thresholds += [float(t) for c in picks for t in (c, np.nextafter(c, 0), np.nextafter(c, 1))]
    for t in thresholds:
        got = m.stop_table.__wrapped__(t, size)
        assert np.array_equal(got[upper], (conf > t)[upper]), t
    # counts past EXACT_UP_TO go to scipy as they are
    big = np.array([m.EXACT_UP_TO + 3, 10]), np.array([m.EXACT_UP_TO, 2])
    want = 1.0 - betainc(big[0] + 1.0, big[1] + 1.0, 0.5) > 0.95
    assert np.array_equal(m.confident(0.95, *big), want)


def test_asc_stop_table_entries_do_not_depend_on_its_size():
    """confident() reads a table of the next power of two: each entry is the one a table of
    any other size holds."""
    m = _asc_module()
    for t in (0.95, 0.8, 0.5):
        big = m.stop_table.__wrapped__(t, 64)
        for size in (1, 2, 3, 17, 33):
            assert np.array_equal(m.stop_table.__wrapped__(t, size), big[:size, :size]), (t, size)
    v1, v2 = np.array([0, 5, 33, 40]), np.array([0, 2, 1, 40])
    assert np.array_equal(m.confident(0.95, v1, v2),
                          m.stop_table.__wrapped__(0.95, 41)[v1, v2])


def test_asc_eval_runs_without_scipy():
    """The lockstep path (what `autotts eval` runs) never imports scipy at the published
    threshold; the per-episode path (traces) does, and both answer alike."""
    code = (
        "import sys, json\n"
        "from autotts.evaluate import EvalProtocol, evaluate\n"
        "from tests.conftest import branch, make_store\n"
        "store = make_store([('A', [branch(['A', 'B'], 30, 'A'), branch(['B'], 20, 'B'),\n"
        "                           branch(['A'], 10, 'A')] * 8)])\n"
        "a = evaluate('asc', [store], [0.0, 1.0], EvalProtocol(draws=4), episodes=True)\n"
        "first = 'scipy' in sys.modules\n"
        "b = evaluate('asc', [store], [0.0, 1.0], EvalProtocol(draws=4), episodes=True,\n"
        "             batch=False)\n"
        "print(json.dumps([first, 'scipy' in sys.modules, a.episodes == b.episodes]))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    assert json.loads(out.stdout) == [False, True, True]
