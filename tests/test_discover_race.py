"""Racing over draws (issue 18): a staged sweep is the full sweep exactly; a clearly weak
candidate stops after its first draws, is marked partial and never selected; a candidate that
can reach the best is swept in full with unchanged numbers; racing off is the loop as before."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from discover_helpers import baseline_cache, config, reply  # noqa: F401 (fixture)

from autotts.discover import run_discovery
from autotts.discover.config import DiscoverConfig
from autotts.discover.fakeserver import FakeOpenAI
from autotts.discover.race import decide, episode_table, jackknife_se, subset_objectives
from autotts.errors import ConfigError, SandboxError
from autotts.evaluate import EvalProtocol
from autotts.sandbox.evaluation import evaluate_sandboxed, merge_stages
from autotts.store import open_store, write_store
from autotts.synth import SynthParams, generate

ROOT = Path(__file__).resolve().parents[1]

# Fails on some episodes (which ones depends on the draw's order), traces every episode.
FLAKY = '''\
class Flaky:
    NAME = "flaky"

    @staticmethod
    def schedule(beta):
        return {"n": 1 + int(round(6 * beta))}

    def __init__(self, n=3):
        self.n = int(n)

    def run(self, ep):
        answers = ep.read_new_many(min(self.n, ep.pool_size)).tolist()
        if self.n > 3 and answers[0] == answers[1] == 1:
            raise ValueError("two ones")
        ep.trace("stop", reason="read", n=len(answers))
        good = [a for a in answers if a >= 0]
        return max(good, key=good.count) if good else -1
'''

# Clearly weak: reads like self-consistency, then answers with the least common answer.
MINORITY = '''\
"""Minority vote: read n whole branches and answer the least common answer."""


class Minority:
    NAME = "minority"

    @staticmethod
    def schedule(beta):
        return {"n": 1 + int(round(15 * beta))}

    def __init__(self, n=4):
        self.n = int(n)

    def run(self, ep):
        answers = [a for a in ep.read_new_many(min(self.n, ep.pool_size)).tolist() if a >= 0]
        ep.trace("stop", reason="read_n")
        if not answers:
            return -1
        return min(answers, key=answers.count)
'''

# As strong as the best seed (it is the seed sc's rule): its full objective equals the best, so
# stopping it would be a false stop.
SC_COPY = (ROOT / "controllers" / "sc.py").read_text()


def _sc_copy() -> str:
    import re

    src = re.sub(r'NAME = "sc"', 'NAME = "sc_again"', SC_COPY)
    assert 'NAME = "sc_again"' in src
    return src


# ---- the staged sandbox evaluation ---------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> Any:
    return open_store(ROOT / "data" / "synthetic")


@pytest.mark.parametrize("cuts", [(2,), (1, 3)])
def test_staged_equals_full(synthetic: Any, cuts: tuple[int, ...]) -> None:
    """Stages of draws merged at the block level give exactly the rows, episodes, traces and
    errors of one evaluation (the errors and traced draws included)."""
    proto = EvalProtocol(draws=5)
    betas = [0.0, 0.5, 1.0]
    kw: dict[str, Any] = dict(episodes=True, traces=True, trace_draws=2, on_error="record",
                              workers=2)
    full = evaluate_sandboxed(FLAKY, [synthetic], betas, proto, **kw)
    edges = [0, *cuts, 5]
    stages = []
    for lo, hi in itertools.pairwise(edges):
        st = evaluate_sandboxed(FLAKY, [synthetic], betas, proto, draws=(lo, hi),
                                deadline=stages[0].deadline if stages else None, **kw)
        assert st.draw_range == (lo, hi)
        assert {r["draws"] for r in st.rows} == {hi - lo}
        assert {e["draw"] for e in st.episodes or []} == set(range(lo, hi))
        stages.append(st)
    merged = merge_stages(stages, [synthetic], betas, proto, episodes=True, traces=True)
    assert full.errors and full.traces  # the comparison covers both
    assert merged.rows == full.rows
    assert merged.episodes == full.episodes
    assert merged.traces == full.traces
    assert merged.errors == full.errors
    assert stages[0].deadline == merged.deadline


def test_stage_arguments_are_checked(synthetic: Any) -> None:
    proto = EvalProtocol(draws=3)
    for bad in [(0, 0), (2, 1), (0, 4), (-1, 2)]:
        with pytest.raises(ConfigError, match="draws must be a range"):
            evaluate_sandboxed(FLAKY, [synthetic], [0.0], proto, draws=bad)
    a = evaluate_sandboxed(FLAKY, [synthetic], [0.0], proto, draws=(0, 1), on_error="record")
    c = evaluate_sandboxed(FLAKY, [synthetic], [0.0], proto, draws=(2, 3), on_error="record")
    with pytest.raises(ConfigError, match=r"not \[0, 3\)"):
        merge_stages([a, c], [synthetic], [0.0], proto)  # draw 1 missing
    b = evaluate_sandboxed(FLAKY.replace("6 * beta", "5 * beta + 1"), [synthetic], [0.0], proto,
                           draws=(1, 3), on_error="record")
    with pytest.raises(SandboxError) as e:
        merge_stages([a, b], [synthetic], [0.0], proto)  # other knobs for the same β
    assert e.value.verdict.kind == "interface"


# ---- the rule ------------------------------------------------------------------------------------


def _table(rng: np.random.Generator, level: float, sd: float, draws: int = 20,
           questions: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two stores × 3 β × `questions` × `draws` of accuracy and tokens."""
    out = []
    for _ in range(2):
        acc = np.clip(level + sd * rng.standard_normal((3, questions, draws)), 0, 100)
        tok = np.array([1e4, 1e5, 1e6])[:, None, None] * (1 + 0.2 * rng.random(acc.shape))
        out.append((acc, tok))
    return out


def test_subset_objective_is_the_rows_objective() -> None:
    """The rule's objective of all draws is `candidates.objective` of their rows."""
    from autotts.discover.candidates import objective

    rng = np.random.default_rng(1)
    table = _table(rng, 50, 10)
    rows = [{"store": f"s{s}", "beta": b, "accuracy": float(acc[i].mean()),
             "tokens": float(tok[i].mean())}
            for s, (acc, tok) in enumerate(table) for i, b in enumerate((0, .5, 1))]
    want, _ = objective(rows, ["s0", "s1"], (5e4, 1.5e6))
    got = subset_objectives(table, np.arange(20)[None, :], (5e4, 1.5e6))[0]
    assert got == pytest.approx(want, abs=1e-5)
    # No spread without variation between draws; infinite with one draw.
    flat = [(np.full_like(a, 40.0), np.broadcast_to(t[:, :, :1], t.shape).copy())
            for a, t in table]
    assert jackknife_se(flat, range(5), (5e4, 1.5e6)) == 0.0
    assert math.isinf(jackknife_se(table, [3], (5e4, 1.5e6)))


def test_question_jackknife_agrees_with_the_draw_jackknife() -> None:
    """Both estimate the same standard error; over many draws they agree closely (the draws'
    jackknife is the noisier one at a small k, which is why the race uses the other)."""
    from autotts.discover.race import jackknife_se_draws

    rng = np.random.default_rng(3)
    table = _table(rng, 50, 30, draws=400, questions=30)
    a = jackknife_se(table, range(400), (5e4, 1.5e6))
    b = jackknife_se_draws(table, range(400), (5e4, 1.5e6))
    assert a > 0 and a == pytest.approx(b, rel=0.15)


def _episodes(table: list[tuple[np.ndarray, np.ndarray]], k: int) -> list[dict[str, Any]]:
    """Episodes whose table is `table`'s first k draws (accuracy read as right when ≥ 50)."""
    return [{"store": f"s{s}", "beta": b, "draw": d, "question": q,
             "correct": bool(acc[i, q, d] >= 50), "tokens": float(tok[i, q, d])}
            for s, (acc, tok) in enumerate(table) for i, b in enumerate((0.0, 0.5, 1.0))
            for q in range(acc.shape[1]) for d in range(k)]


def test_decide_stops_only_below_the_bound() -> None:
    rng = np.random.default_rng(2)
    eps = _episodes(_table(rng, 50, 30), 5)
    table = episode_table(eps, ["s0", "s1"], [0.0, 0.5, 1.0])
    assert [a.shape for a, _ in table] == [(3, 6, 5)] * 2
    obj = float(subset_objectives(table, np.arange(5)[None, :], (5e4, 1.5e6))[0])
    kw: dict[str, Any] = dict(stores=["s0", "s1"], betas=[0.0, 0.5, 1.0],
                              token_range=(5e4, 1.5e6), total=20, z=3.0, best_name="seed sc")
    d = decide(eps, obj, best=obj + 1000, **kw)
    assert d.stop and d.draws == 5 and d.total == 20 and d.spread > 0
    assert d.bound == pytest.approx(obj + 3.0 * d.spread)
    assert "stopped early after 5/20 draws" in d.message() and "seed sc" in d.message()
    assert not decide(eps, obj, best=obj, **kw).stop  # at the best: never stopped
    assert not decide(eps, obj, best=d.bound, **kw).stop  # the bound reaches the best
    assert decide(eps, obj, best=d.bound + 1e-9, **kw).stop


# ---- settings --------------------------------------------------------------------------------------


def test_race_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cfg(**kw: Any) -> DiscoverConfig:
        return DiscoverConfig.from_env("env/aime-qwen3.toml", tmp_path / "r", **kw)

    assert cfg().race_draws == 5 and cfg(race_draws=0).race_draws == 0
    with pytest.raises(ConfigError, match=r"--race-draws must be 0 .off. or at least 2"):
        cfg(race_draws=1)
    with pytest.raises(ConfigError, match=r"at least 4 .*AUTOTTS_TRACE_DRAWS=4.*got 3"):
        cfg(race_draws=3, trace_draws=4)
    with pytest.raises(ConfigError, match="AUTOTTS_RACE_Z must be a positive number"):
        cfg(race_z=0.0)
    monkeypatch.setenv("AUTOTTS_RACE_DRAWS", "many")
    with pytest.raises(ConfigError, match="AUTOTTS_RACE_DRAWS must be a int, got 'many'"):
        cfg()
    monkeypatch.setenv("AUTOTTS_RACE_DRAWS", "6")
    monkeypatch.setenv("AUTOTTS_RACE_Z", "nan")
    with pytest.raises(ConfigError, match="AUTOTTS_RACE_Z"):
        cfg()
    monkeypatch.setenv("AUTOTTS_RACE_Z", "2.5")
    c = cfg()
    assert (c.race_draws, c.race_z) == (6, 2.5)


# ---- the loop --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two search and one held-out synthetic store, 8 draws: room for a race of 3."""
    root = tmp_path_factory.mktemp("env")
    for split, seeds in (("search", (1, 2)), ("heldout", (3,))):
        for k in seeds:
            store = generate(SynthParams(questions=12, branches=16, seed=k, model="synth",
                                         benchmark=f"{split}{k}"))
            write_store(store, root / "stores" / f"{split}{k}")
    env = root / "race.toml"
    env.write_text(
        'name = "race"\n'
        "[splits]\n"
        'search = ["stores/search1", "stores/search2"]\n'
        'heldout = ["stores/heldout3"]\n'
        "[evaluation]\nbetas = [0.0, 0.5, 1.0]\ndraws = 8\nprotocol = \"shuffle\"\n"
        "token_range = [2000, 200000]\n")
    return env


def _run(env_file: Path, run_dir: Path, **kw: Any) -> dict[str, Any]:
    script = [reply(MINORITY), reply(_sc_copy())]
    with FakeOpenAI(script) as server:
        cfg = config(env_file, run_dir, server.url, rounds=2, seeds=("sc",), baselines=(),
                     heldout_draws=2, **kw)
        return run_discovery(cfg)


def _slot(run_dir: Path, n: int) -> dict[str, Any]:
    d = run_dir / "rounds" / f"{n:04d}" / "c1"
    return {"verdict": json.loads((d / "verdict.json").read_text()),
            "results": json.loads((d / "results.json").read_text())}


@pytest.fixture(scope="module")
def raced(env_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "raced"
    _run(env_file, run_dir, race_draws=3)
    return run_dir


@pytest.fixture(scope="module")
def full(env_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    _run(env_file, run_dir, race_draws=0)
    return run_dir


def test_weak_candidate_is_stopped_and_marked(raced: Path) -> None:
    weak = _slot(raced, 1)
    v, res = weak["verdict"], weak["results"]
    assert (v["kind"], v["stage"]) == ("stopped_early", "race")
    assert v["message"].startswith("stopped early after 3/8 draws")
    assert "seed sc" in v["message"]
    assert not res["eligible"] and res["objective"] is None
    assert res["partial"]["draws"] == 3 and res["partial"]["of"] == 8
    assert res["race"]["stop"] and res["race"]["bound"] < res["race"]["best"]
    assert {r["draws"] for r in res["rows"]} == {3}  # the rows say they are partial
    seeds = json.loads((raced / "seeds.json").read_text())["seeds"]
    assert res["race"]["best"] == seeds[0]["objective"]
    # The next prompt says so in one line, and shows the figures as partial.
    p2 = (raced / "rounds" / "0002" / "prompt.md").read_text()
    assert "Verdict: stopped_early at race: stopped early after 3/8 draws" in p2
    assert "(partial: 3/8 draws)" in p2 and "Partial figures, over the first 3 of 8" in p2
    # Never selected; the report lists it.
    sel = json.loads((raced / "final" / "selection.json").read_text())
    assert sel["selected"] is None or sel["selected"]["round"] != 1
    report = (raced / "report" / "report.md").read_text()
    assert "stopped_early (race)" in report
    summary = json.loads((raced / "summary.json").read_text())
    assert summary["verdicts"].get("stopped_early") == 1


def test_strong_candidate_runs_in_full_with_unchanged_numbers(raced: Path, full: Path) -> None:
    strong, plain = _slot(raced, 2), _slot(full, 2)
    assert strong["verdict"]["kind"] == "ok"
    assert not strong["results"]["race"]["stop"]
    for key in ("rows", "objective", "store_objective", "per_question", "monotone", "errors"):
        assert strong["results"][key] == plain["results"][key], key
    assert {r["draws"] for r in strong["results"]["rows"]} == {8}
    # Its digest (traced draws inside the first stage) is the unstaged sweep's.
    d = raced / "rounds" / "0002" / "c1" / "digest.json"
    assert d.read_bytes() == (full / "rounds" / "0002" / "c1" / "digest.json").read_bytes()


def test_racing_off_is_the_loop_as_before(full: Path) -> None:
    weak = _slot(full, 1)
    assert weak["verdict"]["kind"] == "ok" and "race" not in weak["results"]
    assert "partial" not in weak["results"] and weak["results"]["objective"] is not None
    ident = json.loads((full / "config.json").read_text())["identity"]
    assert "race" not in ident


def test_race_setting_is_part_of_the_identity(raced: Path, env_file: Path) -> None:
    ident = json.loads((raced / "config.json").read_text())["identity"]
    assert ident["race"] == [3, 3.0]
    with pytest.raises(ConfigError, match="race"):
        _run(env_file, raced, race_draws=0)


def test_cli_race_draws_flag(env_file: Path, tmp_path: Path) -> None:
    """--race-draws reaches the settings; a bad value is one clear line and a non-zero exit."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "autotts", "discover", "--env", str(env_file), "--run-dir",
           str(tmp_path / "r"), "--dry-run", "--race-draws", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode != 0
    assert "--race-draws must be 0 (off) or at least 2" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
