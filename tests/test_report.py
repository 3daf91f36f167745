"""Reports: metrics (Pareto front, AUC), headless plots, self-contained HTML, reading results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from autotts.cli import app
from autotts.errors import ConfigError
from autotts.metrics import auc_log_tokens, pareto_front
from autotts.report import (
    build_report,
    load_rows,
    make_figure,
    render_png,
    report_from_inputs,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(store, controller, beta, acc, tokens, **extra):
    return {
        "store": store, "controller": controller, "config": {"n": 1}, "beta": beta,
        "accuracy": acc, "accuracy_se": 1.0, "tokens": tokens, "tokens_se": tokens / 50,
        "draws": 10, "questions": 30, **extra,
    }


def rows_two_stores():
    out = []
    for store, shift in (("M/aime24", 0.0), ("M/aime25", -5.0)):
        out += [row(store, "sc", b, 40 + 30 * b + shift, 10_000 * (1 + 60 * b))
                for b in (0, 0.5, 1)]
        out += [row(store, "asc", b, 45 + 25 * b + shift, 20_000 * (1 + 20 * b))
                for b in (0, 0.25, 0.5, 1)]
    out += [row("M/aime24", "parallel_probe", b, 50 + 20 * b, 30_000 * (1 + 10 * b))
            for b in (0, 1)]
    return out


# ---- metrics -----------------------------------------------------------------------------------


def test_pareto_front_basic():
    pts = [(10, 50), (20, 60), (15, 40), (30, 60), (5, 10), (40, 70)]
    assert pareto_front(pts).tolist() == [True, True, False, False, True, True]


def test_pareto_front_ties_and_nan():
    pts = [(10, 50), (10, 50), (10, 40), (float("nan"), 99), (20, 50)]
    assert pareto_front(pts).tolist() == [True, True, False, False, False]
    assert pareto_front([]).tolist() == []


def test_auc_log_tokens():
    assert auc_log_tokens([100, 1000], [50, 50]) == pytest.approx(50)
    # linear in log tokens from 0 to 100 over one decade: mean 50
    assert auc_log_tokens([10, 100], [0, 100]) == pytest.approx(50)
    # order does not matter, duplicates at equal tokens are averaged
    assert auc_log_tokens([100, 10, 100], [90, 0, 110]) == pytest.approx(50)
    # a window inside the curve: first half of the decade, accuracy 0 -> 50, mean 25
    assert auc_log_tokens([10, 100], [0, 100], lo=10, hi=10**1.5) == pytest.approx(25)
    # flat beyond the ends: [1, 10] at 0, then [10, 100] rising: (0 + 50) / 2
    assert auc_log_tokens([10, 100], [0, 100], lo=1, hi=100) == pytest.approx(25)
    assert auc_log_tokens([1000], [42]) == pytest.approx(42)
    with pytest.raises(ValueError):
        auc_log_tokens([0, 10], [1, 2])
    with pytest.raises(ValueError):
        auc_log_tokens([10, 100], [1, 2], lo=100, hi=10)


# ---- plots ---------------------------------------------------------------------------------------


def test_figure_has_one_curve_per_controller_and_store():
    rows = rows_two_stores()
    fig, n = make_figure(rows, "test")
    assert n == 5  # aime24: sc, asc, parallel_probe; aime25: sc, asc
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    curves = [ln for ax in axes for ln in ax.get_lines() if (ln.get_gid() or "").startswith("curve:")]
    assert len(curves) == 5
    assert sorted(ln.get_gid() for ln in axes[0].get_lines() if ln.get_gid().startswith("curve:")) == [
        "curve:M/aime24:asc", "curve:M/aime24:parallel_probe", "curve:M/aime24:sc"]
    fronts = [ln for ax in axes for ln in ax.get_lines() if (ln.get_gid() or "").startswith("pareto:")]
    assert len(fronts) == 2
    for ax in axes:
        assert ax.get_xscale() == "log"
        assert "tokens" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
        legend = ax.get_legend()
        assert legend is not None
        assert "Pareto front" in [t.get_text() for t in legend.get_texts()]
    # every point with a β has its label
    texts = [t.get_text() for ax in axes for t in ax.texts]
    assert sum(t.startswith("β=") for t in texts) == len(rows)


def test_png_is_a_real_nonblank_image(tmp_path):
    from matplotlib.image import imread

    fig, _ = make_figure(rows_two_stores(), "t")
    data = render_png(fig)
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    f = tmp_path / "p.png"
    f.write_bytes(data)
    img = imread(f)
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas


# ---- report directory ------------------------------------------------------------------------------


def test_build_report_writes_everything(tmp_path):
    rows = rows_two_stores()
    extra = {"Rounds": [{"round": 1, "candidate": "c1", "auc": 61.234}]}
    rp = build_report(rows, tmp_path / "rep", "My report", extra_tables=extra)
    assert rp.curves == 5 and rp.stores == ["M/aime24", "M/aime25"]
    assert rp.png.read_bytes().startswith(PNG_MAGIC)
    html = rp.html.read_text()
    assert "data:image/png;base64," in html
    assert "<table>" in html and 'class="pareto"' in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch: one file
    assert "Rounds" in html and "c1" in html
    md = rp.markdown.read_text()
    assert "![accuracy vs tokens](accuracy_vs_tokens.png)" in md
    assert "| store | controller | β |" in md and "★" in md
    summary = json.loads(rp.summary.read_text())
    assert summary["curves"] == 5
    assert len(summary["rows"]) == len(rows)
    # Pareto marks agree with pareto_front per store
    for store in rp.stores:
        srows = [r for r in summary["rows"] if r["store"] == store]
        mask = pareto_front([(r["tokens"], r["accuracy"]) for r in srows])
        assert [r["pareto"] for r in srows] == mask.tolist()
    entry = next(e for e in summary["summary"]
                 if e["store"] == "M/aime24" and e["controller"] == "sc")
    assert entry["best_accuracy"] == pytest.approx(70) and entry["best_beta"] == 1
    assert math.isfinite(entry["auc"])


def test_report_without_beta_and_with_clashing_sources(tmp_path):
    a = [row("S", "sc", 0.5, 60, 1e5, source="a.json")]
    b = [row("S", "sc", 0.5, 62, 1.1e5, source="b.json"), row("S", "mine", None, 65, 2e5)]
    rp = build_report(a + b, tmp_path / "r", "t")
    assert rp.curves == 3  # sc (a.json), sc (b.json), mine
    assert "sc (a.json)" in rp.markdown.read_text()


def test_build_report_rejects_bad_rows(tmp_path):
    with pytest.raises(ConfigError):
        build_report([], tmp_path / "r", "t")
    with pytest.raises(ConfigError, match="lacks"):
        build_report([{"store": "s", "controller": "c"}], tmp_path / "r", "t")


# ---- reading results ---------------------------------------------------------------------------------


def test_load_rows_from_files_and_dirs(tmp_path):
    rows = rows_two_stores()
    f = tmp_path / "eval.json"
    f.write_text(json.dumps(rows[:3]))
    run = tmp_path / "run"
    (run / "rounds" / "r1").mkdir(parents=True)
    (run / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[3:5]) + '{"torn": '
    )
    (run / "rounds" / "r1" / "eval.json").write_text(json.dumps({"rows": rows[5:7]}))
    (run / "config.json").write_text(json.dumps({"model": "x"}))  # not rows: skipped
    got = load_rows([f, run])
    assert len(got) == 7
    assert got[0]["source"] == "eval.json"
    assert {r["source"] for r in got[3:]} == {"run/results.jsonl", "run/rounds/r1/eval.json"}


def test_load_rows_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such"):
        load_rows([tmp_path / "missing.json"])
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_rows([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no result rows"):
        load_rows([empty])
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"store": "s"}]))
    with pytest.raises(ConfigError, match="lacks"):
        load_rows([wrong])


def test_cli_report(tmp_path):
    f = tmp_path / "eval.json"
    f.write_text(json.dumps(rows_two_stores()))
    res = CliRunner().invoke(app, ["report", str(f), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.html").is_file()
    assert (tmp_path / "rep" / "accuracy_vs_tokens.png").is_file()
    # a report directory can itself be read back (summary.json holds rows but is skipped,
    # so point it at the eval file inside a directory)
    d = tmp_path / "d"
    d.mkdir()
    (d / "eval.json").write_text(f.read_text())
    res = CliRunner().invoke(app, ["report", str(d), "--out", str(tmp_path / "rep2")])
    assert res.exit_code == 0, res.output


def test_report_from_inputs_with_a_reader(tmp_path):
    """Higher layers (the discovery run directory) plug in a reader; other inputs load as usual."""
    from types import SimpleNamespace

    run = tmp_path / "run1"
    run.mkdir()
    f = tmp_path / "eval.json"
    f.write_text(json.dumps(rows_two_stores()[:3]))

    def reader(p):
        if p != run:
            return None
        return SimpleNamespace(rows=[row("M/aime24", "r1:cand", 0.5, 66, 50_000)],
                               tables={"Rounds": [{"round": 1, "verdict": "ok"}]},
                               title="run one", notes=["a note"])

    rp = report_from_inputs([run], tmp_path / "a", readers=[reader])
    html = rp.html.read_text()
    assert "<title>run one</title>" in html and "a note" in html and "Rounds" in html
    rp = report_from_inputs([run, f], tmp_path / "b", readers=[reader])
    assert rp.curves == 2
    assert "Rounds (run1)" in rp.markdown.read_text()


# ---- question-level intervals (issue 15) -------------------------------------------------------


def test_ci_bands_and_columns(tmp_path):
    rows = rows_two_stores()
    for r in rows:
        if r["controller"] == "sc":
            r["accuracy_ci_questions"] = [r["accuracy"] - 8, r["accuracy"] + 7]
            r["tokens_ci_questions"] = [r["tokens"] * 0.9, r["tokens"] * 1.1]
    fig, _ = make_figure(rows)
    bands = sorted(c.get_gid() for ax in fig.axes for c in ax.collections
                   if (c.get_gid() or "").startswith("band:"))
    assert bands == ["band:M/aime24:sc", "band:M/aime25:sc"]  # only curves with intervals
    rp = build_report(rows, tmp_path / "r")
    md = rp.markdown.read_text()
    assert "± se (draws)" in md and "95% CI (questions)" in md
    sc_line = next(ln for ln in md.splitlines() if "| sc |" in ln and "| 0.5 |" in ln)
    assert "[47.0, 62.0]" in sc_line  # accuracy 55 at β=0.5 on aime24
    plain = build_report(rows_two_stores(), tmp_path / "p").markdown.read_text()
    assert "| 95% CI (questions) |" not in plain  # no column without intervals


def test_rows_with_episodes_get_intervals_and_drop_them(tmp_path):
    from autotts import stats

    rng = np.random.default_rng(0)
    rows = []
    for b in (0.0, 0.5, 1.0):
        correct = (rng.random((4, 12)) < 0.3 + 0.5 * b).astype(int)
        tokens = rng.integers(1000, 5000, (4, 12)) * (1 + 10 * b)
        rows.append(row("M/aime24", "sc", b, float(correct.mean() * 100),
                        float(tokens.mean()),
                        episodes={"draws": 4, "questions": 12, "correct": correct.tolist(),
                                  "tokens": tokens.astype(int).tolist()}))
    rp = build_report(rows, tmp_path / "r")
    summary = json.loads(rp.summary.read_text())
    assert all("episodes" not in r for r in summary["rows"])
    curve = stats.curves_from_rows(rows)[("M/aime24", "sc")]
    want = stats.beta_intervals(curve)
    for r, w in zip(summary["rows"], want, strict=True):
        assert r["accuracy_ci_questions"] == pytest.approx([w["accuracy"].low, w["accuracy"].high])


def _episode_rows(controller, p_of_beta, seed, questions=12, draws=4, store="M/aime24"):
    rng = np.random.default_rng(seed)
    out = []
    for b in (0.0, 0.5, 1.0):
        correct = (rng.random((draws, questions)) < p_of_beta(b)).astype(int)
        tokens = rng.integers(1000, 5000, (draws, questions)) * (1 + 10 * b)
        out.append(row(store, controller, b, float(correct.mean() * 100), float(tokens.mean()),
                       questions=questions, draws=draws,
                       episodes={"draws": draws, "questions": questions,
                                 "correct": correct.tolist(),
                                 "tokens": tokens.astype(int).tolist()}))
    return out


def test_summary_auc_has_its_interval_over_questions(tmp_path):
    """The Summary's AUC column carries its 95% interval over questions where the curve's
    per-question outcomes are known (rows with episodes, or `curves` given), and says in words
    why not elsewhere: no bare point beside intervals."""
    from autotts import stats

    rows = _episode_rows("sc", lambda b: 0.3 + 0.5 * b, 0) + _episode_rows(
        "asc", lambda b: 0.4 + 0.4 * b, 1)
    rows += [row("M/aime24", "plain", b, 50 + 10 * b, 5000 * (1 + 10 * b)) for b in (0, 0.5, 1)]
    rp = build_report(rows, tmp_path / "r")
    summary = {e["controller"]: e for e in json.loads(rp.summary.read_text())["summary"]}
    curves = stats.curves_from_rows([r for r in rows if "episodes" in r])
    for name in ("sc", "asc"):
        e = summary[name]
        iv = stats.auc_interval(curves[("M/aime24", name)], e["auc_range"])
        assert e["auc_ci_questions"] == pytest.approx([iv.low, iv.high])
        assert iv.estimate == pytest.approx(e["auc"])  # the same AUC as the column's point
        assert iv.low < e["auc"] < iv.high and iv.high - iv.low > 1.0  # 12 questions: wide
    assert summary["plain"]["auc_ci_questions"] is None
    md = rp.markdown.read_text()
    assert "AUC 95% CI (questions)" in md
    assert "none (no per-question outcomes)" in next(
        ln for ln in md.splitlines() if "| plain |" in ln and "none (" in ln)
    # Without any per-question outcomes there is no column, and the legend says why in words.
    plain = build_report(rows_two_stores(), tmp_path / "p").markdown.read_text()
    assert "AUC 95% CI" not in plain
    assert "Summary's AUCs have no interval over questions" in plain


def test_summary_auc_interval_of_one_question_is_none(tmp_path):
    rows = _episode_rows("sc", lambda b: 0.5, 0, questions=1)
    rows += _episode_rows("asc", lambda b: 0.5, 1, questions=1)
    rp = build_report(rows, tmp_path / "r")
    summary = json.loads(rp.summary.read_text())["summary"]
    assert [e["auc_ci_questions"] for e in summary] == [None, None]
    assert [e["auc_ci_note"] for e in summary] == ["1 question", "1 question"]
    assert "none (1 question)" in rp.markdown.read_text()


def test_label_boxes_are_matplotlib_extents():
    """β labels are placed from boxes computed from each text's size, not by annotating every
    candidate spot: the computed box must be the extent matplotlib gives the annotation there."""
    from autotts.report import _LABEL_SPOTS, _label_box

    fig, _ = make_figure(rows_two_stores(), "t")
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    px = fig.dpi / 72.0
    (xa, xb), (ya, yb) = ax.get_xlim(), ax.get_ylim()
    x, y = math.sqrt(xa * xb), (ya + yb) / 2  # inside the axes: a point outside has no extent
    for text in ("β=0", "β=0.25", "β=1"):
        probe = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points",
                            ha="left", va="bottom", fontsize=7)
        size = probe.get_window_extent(renderer)
        probe.remove()
        ox, oy = ax.transData.transform((x, y))
        for spot in _LABEL_SPOTS:
            dx, dy, ha, va = spot
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              ha=ha, va=va, fontsize=7)
            bb = ann.get_window_extent(renderer)
            ann.remove()
            box = _label_box(ox, oy, size.width, size.height, spot, px)
            assert box == pytest.approx((bb.x0, bb.y0, bb.x1, bb.y1), abs=1e-6), (text, spot)
