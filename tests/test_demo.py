"""`autotts demo` end to end, on a tiny generated store with 2 draws (fast)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import autotts.demo as demo
from autotts.cli import app
from autotts.controller import builtin_names, load
from autotts.synth import SynthParams, write_synthetic
from tests.conftest import skip_or_fail

TINY = SynthParams(questions=4, branches=16, seed=5)
BETAS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "tiny"
    write_synthetic(TINY, path)
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_demo_end_to_end(tiny_store, tmp_path):
    res = demo.run_demo(tmp_path / "out", store=tiny_store, betas=BETAS, draws=2, workers=1,
                        console=quiet(), progress=False)
    n = len(builtin_names())
    assert len(res.rows) == n * len(BETAS)
    assert {r["controller"] for r in res.rows} == {load(c).name for c in builtin_names()}
    assert res.report.curves == n
    assert res.report.png.stat().st_size > 10_000
    assert "data:image/png;base64," in res.report.html.read_text()
    saved = json.loads(res.results.read_text())
    assert len(saved) == len(res.rows) and "errors" not in saved[0]
    assert {"store", "controller", "config", "beta", "accuracy", "tokens"} <= set(saved[0])
    out = io.StringIO()
    demo.print_demo(res, Console(file=out, width=200))
    text = out.getvalue()
    assert "report.html" in text
    assert "autotts eval --controller" in text and "autotts discover" in text


def test_demo_cli(tiny_store, tmp_path):
    res = CliRunner().invoke(app, ["demo", "--store", str(tiny_store), "--draws", "2",
                                   "--workers", "1", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "report.html").is_file()
    assert (tmp_path / "d" / "accuracy_vs_tokens.png").is_file()
    assert "Next" in res.output


def test_demo_regenerates_a_missing_shipped_store(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "shipped_store_path", lambda: tmp_path / "absent")
    monkeypatch.setattr(demo, "SHIPPED", TINY)
    res = demo.run_demo(tmp_path / "out", controllers=["sc"], betas=(0.0,), draws=2, workers=1,
                        console=quiet(), progress=False)
    assert (tmp_path / "out" / "synthetic-store" / "manifest.json").is_file()
    assert res.store == "synthetic/seed5" and len(res.rows) == 1


def test_defaults_on_the_shipped_store(tmp_path):
    """The shipped store, every built-in and the default β grid, with few draws to stay fast."""
    if not (demo.shipped_store_path() / "manifest.json").is_file():
        skip_or_fail("no shipped store in this installation")
    res = demo.run_demo(tmp_path / "demo", draws=2, console=quiet(), progress=False)
    assert res.store == "synthetic/seed0"
    assert len(res.rows) == len(builtin_names()) * len(demo.DEFAULT_BETAS)
    assert all(r["errors"] == 0 for r in res.rows)
