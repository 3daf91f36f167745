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
    # each figure with its 95% interval over questions (as `autotts eval` prints it), and the
    # Summary's AUCs with theirs
    for r in saved:
        lo, hi = r["accuracy_ci_questions"]
        assert lo <= r["accuracy"] <= hi, r
    md = res.report.markdown.read_text()
    assert "95% CI (questions)" in md.split("## Summary")[1].split("##")[0]
    assert "have no interval over questions" not in md
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


def test_demo_lists_what_it_wrote_and_next_uses_its_store(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "shipped_store_path", lambda: tmp_path / "absent")
    monkeypatch.setattr(demo, "SHIPPED", TINY)
    monkeypatch.chdir(tmp_path)
    res = demo.run_demo("out", controllers=["sc", "asc"], betas=BETAS, draws=2, workers=1,
                        console=quiet(), progress=False)
    listed = {p.name for p, _ in demo.written_files(res)}
    assert listed == {p.name for p in (tmp_path / "out").iterdir()}
    out = io.StringIO()
    demo.print_demo(res, Console(file=out, width=300))
    text = out.getvalue()
    for name in listed:
        assert name in text
    nxt = text[text.index("Next:"):]
    assert "--store out/synthetic-store" in nxt  # the store it actually ran on
    assert "--store data/stores/Qwen3-8B/aime24" not in nxt.split("autotts import")[0]
    assert f"--model {demo.DISCOVER_MODEL}" in nxt


def test_next_steps_name_the_environment_as_the_stores_from_outside_the_checkout(tmp_path,
                                                                                 monkeypatch):
    # Run from a folder outside the checkout, the discover hint named the environment file by a
    # relative path climbing to / and back (../../../work/...); the store paths beside it are
    # absolute (or ~/...) there, and the environment's must be too.
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    cmds = dict(demo.next_steps())
    discover = next(c for what, c in cmds.items() if "discover" in what)
    env_arg = discover.split("--env ", 1)[1].split()[0]
    assert not env_arg.startswith("../..")
    assert Path(env_arg).expanduser().resolve() == (demo.envs_dir() / "aime-qwen3.toml").resolve()


def test_one_model_name_across_readme_and_hints():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"--model {demo.DISCOVER_MODEL}" in readme
    import re

    assert set(re.findall(r"--model (gpt-[\w.-]+)", readme)) == {demo.DISCOVER_MODEL}


def test_beta_labels_do_not_overlap(tiny_store, tmp_path):
    from autotts.report import make_figure

    res = demo.run_demo(tmp_path / "out", store=tiny_store, betas=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                        draws=2, workers=1, console=quiet(), progress=False)
    fig, _ = make_figure(res.rows, "t")
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for ax in fig.axes for t in ax.texts
             if t.get_text().startswith("β=")]
    assert len(boxes) > len(res.rows) // 2  # most points keep their label
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert not (w > 0.5 and h > 0.5), (a, b)
