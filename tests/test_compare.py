"""`autotts compare`, eval's question-level intervals, `eval --json --json-episodes`, and held-out
groups in environment files (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from discover_helpers import make_env
from typer.testing import CliRunner

from autotts.cli import app
from autotts.envdef import load_env
from autotts.errors import ConfigError
from autotts.paths import envs_dir


def grouped_env(tmp_path: Path) -> Path:
    """make_env's stores, the held-out ones as two named groups."""
    env = make_env(tmp_path)
    text = env.read_text().replace('heldout = ["stores/heldout3", "stores/heldout4"]\n', "")
    text += '[heldout]\nthree = ["stores/heldout3"]\nfour = ["stores/heldout4"]\n'
    env.write_text(text)
    return env


def invoke(*args: str) -> str:
    from autotts import cli

    # Wide tables, whatever terminal (or none, under pytest-xdist) the console found at import.
    cli.out.width = 250
    try:
        res = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    finally:
        cli.out.width = None  # type: ignore[assignment]
    assert res.exit_code == 0, res.output
    return res.output


# ---- environments ------------------------------------------------------------------------------


def test_heldout_groups(tmp_path: Path) -> None:
    e = load_env(grouped_env(tmp_path))
    assert list(e.groups()) == ["three", "four"]
    assert [Path(p).name for p in e.split_paths("heldout")] == ["heldout3", "heldout4"]
    assert [Path(p).name for p in e.split_paths("heldout:four")] == ["heldout4"]
    assert e.draws_for("heldout:four") == e.draws_for("heldout")
    with pytest.raises(ConfigError, match="no held-out group 'five'"):
        e.split_paths("heldout:five")


def test_old_files_have_one_group(tmp_path: Path) -> None:
    e = load_env(make_env(tmp_path))
    assert list(e.groups()) == ["heldout"]
    assert e.groups()["heldout"] == e.split_paths("heldout")


@pytest.mark.parametrize("extra, message", [
    ('[heldout]\nthree = ["stores/search1"]\n', "in both search and heldout"),
    ('[heldout]\n"bad name" = ["stores/heldout3"]\n', "group name"),
    ('[heldout]\nthree = []\n', "heldout.three"),
])
def test_heldout_group_errors(tmp_path: Path, extra: str, message: str) -> None:
    env = make_env(tmp_path)
    text = env.read_text().replace('heldout = ["stores/heldout3", "stores/heldout4"]\n', "")
    env.write_text(text + extra)
    with pytest.raises(ConfigError, match=message):
        load_env(env)


def test_heldout_list_and_groups_together_is_an_error(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.write_text(env.read_text() + '[heldout]\nthree = ["stores/heldout3"]\n')
    with pytest.raises(ConfigError, match="not both"):
        load_env(env)


@pytest.mark.reference
def test_shipped_scale_environment() -> None:
    from tests.conftest import reference_file

    reference_file("Qwen3-1.7B/aime24.json")  # the env's stores must exist to be listed
    e = load_env(envs_dir() / "qwen3-scale.toml")
    assert [Path(p).parent.name for p in e.split_paths("search")] == ["Qwen3-1.7B"]
    assert set(e.groups()) == {"other-sizes-aime24", "same-size-aime25", "other-sizes-aime25"}
    held = e.split_paths("heldout")
    assert len(held) == 7 and not set(held) & set(e.split_paths("search"))


# ---- eval ----------------------------------------------------------------------------------------


def test_eval_prints_both_kinds_of_interval_and_writes_episodes(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    out = tmp_path / "pp.json"
    text = invoke("eval", "--controller", "parallel_probe", "--env", str(env), "--json", str(out),
                  "--json-episodes")
    assert "± se draws" in text and "95% CI questions" in text
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 3
    for r in rows:
        lo, hi = r["accuracy_ci_questions"]
        assert lo <= r["accuracy"] <= hi
        ep = r["episodes"]
        assert ep["draws"] == 3 and ep["questions"] == 5
        assert len(ep["correct"]) == 3 and len(ep["correct"][0]) == 5
    plain = tmp_path / "plain.json"
    invoke("eval", "--controller", "parallel_probe", "--env", str(env), "--json", str(plain))
    assert all("episodes" not in r for r in json.loads(plain.read_text()))
    res = CliRunner().invoke(app, ["eval", "--controller", "sc", "--env", str(env),
                                   "--json-episodes"])
    assert res.exit_code != 0


# ---- compare -------------------------------------------------------------------------------------


def test_compare_controllers_and_files_agree(tmp_path: Path) -> None:
    env = grouped_env(tmp_path)
    js = tmp_path / "cmp.json"
    text = invoke("compare", "parallel_probe", "sc", "--env", str(env), "--split", "all",
                  "--resamples", "300", "--json", str(js))
    assert "ΔAUC" in text and "pooled" in text and "wins" in text
    report = json.loads(js.read_text())
    assert list(report["groups"]) == ["search", "three", "four", "heldout (all groups)"]
    cmp = report["comparisons"][0]
    assert (cmp["a"], cmp["b"]) == ("parallel_probe", "sc")
    search = cmp["groups"]["search"]
    assert search["pooled"]["low"] <= search["pooled"]["estimate"] <= search["pooled"]["high"]
    # The same comparison from eval result files that carry their episodes.
    files = []
    for name in ("parallel_probe", "sc"):
        f = tmp_path / f"{name}.json"
        invoke("eval", "--controller", name, "--env", str(env), "--json", str(f),
               "--json-episodes")
        files.append(str(f))
    js2 = tmp_path / "cmp2.json"
    invoke("compare", *files, "--resamples", "300", "--json", str(js2),
           "--token-range", "2000,200000")
    again = json.loads(js2.read_text())["comparisons"][0]["groups"]["results"]

    def marginal(d: dict) -> dict:  # the Holm figures depend on the family shown (all splits)
        return {k: v for k, v in d.items() if k not in ("p_holm", "significant_holm")}

    assert marginal(again["pooled"]) == marginal(search["pooled"])
    assert {s: marginal(d) for s, d in again["stores"].items()} == {
        s: marginal(d) for s, d in search["stores"].items()}


def test_compare_a_controller_with_itself(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    js = tmp_path / "same.json"
    invoke("compare", "sc", "sc", "--env", str(env), "--resamples", "300", "--json", str(js))
    cmp = json.loads(js.read_text())["comparisons"][0]
    assert (cmp["a"], cmp["b"]) == ("sc (1)", "sc (2)")
    pooled = cmp["groups"]["search"]["pooled"]
    assert pooled["estimate"] == 0 and pooled["low"] <= 0 <= pooled["high"]
    assert not pooled["significant"]


def test_compare_errors(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    for args, message in (
        (["sc"], "at least two"),
        (["sc", "asc", "--env", str(env), "--split", "nope"], "unknown split"),
        (["sc", "asc"], "needs stores"),
        (["sc", "asc", "--env", str(env), "--token-range", "5"], "--token-range"),
        (["sc", str(tmp_path / "missing.json")], "no such result file"),
        (["sc", "asc", "--env", str(env), "--method", "studentized"], "interval method"),
        (["sc", "asc", "--env", str(env), "--top", "-1"], "--top must be at least 0"),
    ):
        res = CliRunner().invoke(app, ["compare", *args])
        assert res.exit_code != 0
        assert message in str(res.exception) or message in res.output


def test_stores_beside_an_environment_take_its_draws(tmp_path: Path, monkeypatch) -> None:
    """--store beside --env: those stores run the environment's search draws (--help: "default:
    the environment's"), not compare's own default of 100."""
    import autotts.evaluate as evaluate_mod

    env = make_env(tmp_path)
    seen: list[int] = []
    real = evaluate_mod.evaluate

    def spy(*args, **kwargs):
        seen.append(args[3].draws)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "evaluate", spy)
    invoke("compare", "sc", "sc", "--env", str(env), "--store",
           str(tmp_path / "stores" / "heldout3"), "--resamples", "300")
    assert seen and set(seen) == {load_env(env).draws}


def test_stores_with_the_same_questions_are_resampled_together(tmp_path: Path) -> None:
    """Two models' replays of one benchmark (the same questions): compare resamples them together
    (says so, and records it), so the pooled interval is the clustered one, from stores and from
    result files alike; resampled apart it would be narrower than the data allow."""
    from autotts import stats
    from autotts.store import write_store
    from autotts.synth import SynthParams, generate

    paths = []
    for model, skill in (("m1", -1.0), ("m2", -3.0)):
        st = generate(SynthParams(questions=8, branches=16, seed=3, model=model, benchmark="b",
                                  skill=skill))
        write_store(st, tmp_path / model)
        paths += ["--store", str(tmp_path / model)]
    js = tmp_path / "cmp.json"
    text = invoke("compare", "parallel_probe", "sc", *paths, "--betas", "0,0.5,1", "--draws", "3",
                  "--resamples", "300", "--token-range", "2000,200000", "--json", str(js))
    assert "resampled together" in text and "m1/b, m2/b" in text
    report = json.loads(js.read_text())
    assert report["shared_questions"] == {"m1/b": "m1/b + m2/b", "m2/b": "m1/b + m2/b"}
    pooled = report["comparisons"][0]["groups"]["stores"]["pooled"]
    files = []
    for name in ("parallel_probe", "sc"):
        f = tmp_path / f"{name}.json"
        invoke("eval", "--controller", name, *paths, "--betas", "0,0.5,1", "--draws", "3",
               "--json", str(f), "--json-episodes")
        files.append(str(f))
    js2 = tmp_path / "cmp2.json"
    invoke("compare", *files, "--resamples", "300", "--json", str(js2), "--token-range",
           "2000,200000")
    assert json.loads(js2.read_text())["comparisons"][0]["groups"]["results"]["pooled"] == pooled
    a = {s: c for (s, _), c in stats.load_curves(files[0]).items()}
    b = {s: c for (s, _), c in stats.load_curves(files[1]).items()}
    apart = stats.compare(a, b, (2000, 200000), resamples=300).pooled
    assert (apart.low, apart.high) != (pooled["low"], pooled["high"])


def test_a_store_of_one_question_has_no_interval(tmp_path: Path) -> None:
    """Resampling a single question gives the same figure every time: the interval would be
    [x, x] and any difference 'significant'. There is no interval instead, said so, in compare,
    eval and report (and JSON null, never NaN)."""
    from autotts.report import build_report
    from autotts.store import write_store
    from autotts.synth import SynthParams, generate

    write_store(generate(SynthParams(questions=1, branches=16, seed=5)), tmp_path / "one")
    args = ["--store", str(tmp_path / "one"), "--betas", "0,0.5,1", "--draws", "3"]
    js = tmp_path / "cmp.json"
    text = invoke("compare", "parallel_probe", "sc", *args, "--resamples", "200",
                  "--token-range", "2000,200000", "--json", str(js))
    assert "no interval" in text
    d = json.loads(js.read_text())["comparisons"][0]["groups"]["stores"]["stores"]
    (cell,) = d.values()
    assert cell["estimate"] != 0  # a difference a degenerate interval would have called real
    assert cell["low"] is None and cell["high"] is None and cell["significant"] is False
    ev = tmp_path / "sc.json"
    text = invoke("eval", "--controller", "sc", *args, "--json", str(ev))
    assert "– (1 question)" in text
    assert "NaN" not in ev.read_text()
    rows = json.loads(ev.read_text())
    assert all(r["accuracy_ci_questions"] == [None, None] for r in rows)
    paths = build_report(rows, tmp_path / "report", "one question")
    assert "[–, –]" not in paths.markdown.read_text()


def test_holm_over_every_comparison_shown(tmp_path: Path) -> None:
    """compare shows many verdicts at once (pairs × stores × pooled groups): each carries its
    bootstrap p-value and the Holm-adjusted one over the whole family shown, each distinct claim
    counted once (a store shown in two groups is one comparison)."""
    from autotts import stats
    from autotts.compare import _verdict

    env = grouped_env(tmp_path)
    js = tmp_path / "cmp.json"
    text = invoke("compare", "parallel_probe", "sc", "asc", "--env", str(env), "--split", "all",
                  "--resamples", "300", "--json", str(js))
    report = json.loads(js.read_text())
    # per pair: 4 stores, pooled search and pooled "heldout (all groups)" (one-store groups
    # have no pooled row): 6; two pairs
    assert report["family"]["comparisons"] == 12
    assert "Holm p" in text and "12" in text
    cells: dict[tuple, dict] = {}
    for entry in report["comparisons"]:
        for g, cmp in entry["groups"].items():
            for s, d in cmp["stores"].items():
                cells[(entry["b"], "", s)] = d
            if len(cmp["stores"]) > 1:
                cells[(entry["b"], g, "")] = cmp["pooled"]
    assert len(cells) == 12
    keys = list(cells)
    want = stats.holm([cells[k]["p_value"] for k in keys])
    for k, h in zip(keys, want, strict=True):
        assert cells[k]["p_holm"] == pytest.approx(h)
        assert cells[k]["p_holm"] >= cells[k]["p_value"]
        assert cells[k]["significant_holm"] == (cells[k]["significant"] and h < 0.05)
    # a verdict the interval makes but the family does not keep says so
    d = stats.Difference(1.0, 0.2, 1.8, 0.95, "bca", 0.99, 0.01)
    assert _verdict(d, 0.04, 0.95) == "better"
    assert _verdict(d, 0.12, 0.95) == "better (not after Holm)"


def test_one_draw_has_no_standard_error_over_draws(tmp_path: Path) -> None:
    """With one shuffle draw there is no spread over draws to measure: eval and report print '–',
    not a standard error of 0 that would pass for an exact figure (the rows keep 0.0)."""
    from autotts.report import build_report

    env = make_env(tmp_path)
    js = tmp_path / "one.json"
    text = invoke("eval", "--controller", "sc", "--env", str(env), "--draws", "1", "--json",
                  str(js))
    rows = json.loads(js.read_text())
    assert all(r["accuracy_se"] == 0.0 and r["draws"] == 1 for r in rows)
    body = [line for line in text.splitlines() if "synth/search1" in line]
    assert body and all(" 0.00 " not in line and "–" in line for line in body)
    md = build_report(rows, tmp_path / "report", "one draw").markdown.read_text()
    table = [line for line in md.splitlines()  # the results table (with the CI columns)
             if line.startswith("| synth/search1") and "[" in line]
    assert table and all("| 0.00 |" not in line and "| – |" in line for line in table)
