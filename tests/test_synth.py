"""The synthetic replay generator: determinism, validity, calibration ranges, the shipped store."""

from __future__ import annotations

import itertools
import json
import shlex

import numpy as np
import pytest
from typer.testing import CliRunner

from autotts.cli import app
from autotts.errors import ConfigError
from autotts.paths import project_data_dir
from autotts.store import open_store, read_store_dir
from autotts.synth import (
    ERR,
    SynthParams,
    calibration_stats,
    convergence_curve,
    generate,
    with_overrides,
    write_synthetic,
)
from tests.conftest import branch, make_store, skip_or_fail

SMALL = SynthParams(questions=6, branches=12, seed=3)


def tables_equal(a, b) -> bool:
    return a.questions.equals(b.questions) and a.branches.equals(b.branches) and (
        a.answers.equals(b.answers)
    )


def test_same_seed_same_tables_and_bytes(tmp_path):
    a, b = generate(SMALL), generate(SMALL)
    assert tables_equal(a, b)
    write_synthetic(SMALL, tmp_path / "a")
    write_synthetic(SMALL, tmp_path / "b")
    for name in ("questions.parquet", "branches.parquet", "answers.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ma["content_hash"] == mb["content_hash"]


def test_other_seed_other_store():
    other = with_overrides(SMALL, {"seed": 4})
    assert not generate(other).branches.equals(generate(SMALL).branches)


def test_question_i_does_not_depend_on_the_number_of_questions():
    few = generate(with_overrides(SMALL, {"questions": 2}))
    many = generate(SMALL)
    n = few.branches.num_rows
    assert few.branches.equals(many.branches.slice(0, n))
    assert few.questions.column("gold").equals(many.questions.column("gold").slice(0, 2))


def test_written_store_is_valid_and_describes_itself(tmp_path):
    write_synthetic(SMALL, tmp_path / "s")
    st = read_store_dir(tmp_path / "s")
    assert st.name == "synthetic/seed3"
    assert st.num_questions == 6 and st.branches.num_rows == 72
    assert st.delta == 500 and st.answer_mode == "exact"
    m = st.manifest
    assert m["sampling"]["generator"] == "autotts.synth"
    assert m["sampling"]["seed"] == 3
    assert m["sampling"]["params"]["branches"] == 12
    assert m["source"]["kind"] == "synthetic"
    assert m["source"]["command"].startswith("autotts synth --out ")
    data = st.replay()
    assert data.num_questions == 6
    assert np.all(data.tokens > 0)
    gold = st.gold_classes()
    assert np.all(gold >= 0)
    # every branch has probes within the limits, and 'ERR' appears as an answer string
    lengths = np.diff(data.probe_offsets)
    assert lengths.min() >= SMALL.min_probes and lengths.max() <= SMALL.max_probes


def test_recorded_command_regenerates_the_store(tmp_path):
    params = with_overrides(SynthParams(questions=4, branches=8, seed=11, skill=-1.5),
                            {"tail": 0.5, "err_probe": 0.1})
    first = write_synthetic(params, tmp_path / "first")
    cmd = shlex.split(first.manifest["source"]["command"])
    assert cmd[:2] == ["autotts", "synth"]
    args = cmd[2:]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    res = CliRunner().invoke(app, ["synth", *args])
    assert res.exit_code == 0, res.output
    assert tables_equal(first, open_store(tmp_path / "again"))


def test_stats_sit_in_the_reference_range():
    s = calibration_stats(generate(SynthParams(questions=40, branches=64, seed=0)))
    assert 25 <= s["pass_at_1"] <= 80
    assert s["majority_accuracy"] >= s["pass_at_1"] - 5
    assert 10_000 <= s["tokens_mean"] <= 20_000
    assert s["tokens_max"] <= 80 * 500 + 1500
    assert 22 <= s["probes_per_branch_mean"] <= 36
    assert s["probes_per_branch_max"] <= 80
    assert 3 <= s["err_share_probes"] <= 10
    assert 0 < s["err_share_finals"] <= 5
    assert 10 <= s["probes_beyond_tokens_share"] <= 25
    assert 55 <= s["probe_stickiness"] <= 70
    assert 1.5 <= s["wrong_right_length_ratio"] <= 2.6
    conv = s["convergence"]
    assert len(conv) == 10
    assert conv[0] < 12 and 70 <= conv[-1] <= 90
    assert all(b >= a - 1 for a, b in itertools.pairwise(conv))  # rises with depth


def test_skill_moves_pass_at_1():
    weak = calibration_stats(generate(SynthParams(questions=30, branches=32, skill=-3.5)))
    strong = calibration_stats(generate(SynthParams(questions=30, branches=32, skill=2.0)))
    assert weak["pass_at_1"] < 30 < 55 < strong["pass_at_1"]
    assert weak["distinct_finals_per_question"] > strong["distinct_finals_per_question"]


def test_convergence_curve_by_relative_depth():
    st = make_store([("7", [branch(["1", "7"], 25, "7"), branch(["2", ERR, "3", "3"], 45, "3")])])
    curve = convergence_curve(st, bins=2)
    # first halves: "1" (no), "2", ERR (no, no); second halves: "7" (yes), "3", "3" (yes, yes)
    assert curve.tolist() == [0.0, 100.0]


def test_bad_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="no knob"):
        with_overrides(SMALL, {"nope": 1})
    with pytest.raises(ConfigError, match="expected int"):
        with_overrides(SMALL, {"questions": "many"})
    with pytest.raises(ConfigError, match="probability"):
        generate(with_overrides(SMALL, {"tail": 1.5}))
    with pytest.raises(ConfigError, match="at least one"):
        generate(SynthParams(questions=0))


def test_cli_synth_prints_summary(tmp_path):
    res = CliRunner().invoke(
        app, ["synth", "--out", str(tmp_path / "s"), "--seed", "2", "--questions", "3",
              "--branches", "5", "--set", "err_probe=0"],
    )
    assert res.exit_code == 0, res.output
    assert "pass@1" in res.output
    st = open_store(tmp_path / "s")
    probes = [p for ps in st.branches.column("probe_answers").to_pylist() for p in ps]
    assert ERR not in probes


def test_shipped_store_is_small_and_regenerable():
    from autotts.demo import SHIPPED

    path = project_data_dir() / "synthetic"
    if not (path / "manifest.json").is_file():
        skip_or_fail("no shipped store in this installation (demo regenerates it)")
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 2 * 1024 * 1024
    shipped = read_store_dir(path)
    assert tables_equal(shipped, generate(SHIPPED))
    readme = (project_data_dir() / "README.md").read_text()
    assert SHIPPED.command("data/synthetic") in readme
    assert shipped.manifest["source"]["command"] == SHIPPED.command("data/synthetic")
