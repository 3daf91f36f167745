"""Configuration precedence in one place (issue 17 item 3): flags given > the environment file >
the command's defaults, for `autotts eval`, `autotts sweep` and `autotts discover` alike."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
from discover_helpers import make_env

import autotts.evaluate
import autotts.sweep
from autotts import settings
from autotts.cli import DEFAULT_BETAS, main, parse_betas
from autotts.discover.config import DiscoverConfig
from autotts.envdef import load_env
from autotts.evaluate import EvalProtocol

KNOBS = ("[replay]\nprobe_cost = 7\nbranch_cap = 12\nbudget = 40000\n"
         "[evaluation]\nbetas = [0.0, 0.5, 1.0]\ndraws = 3\nheldout_draws = 5\n"
         'protocol = "subsample"\ntoken_range = [2000, 200000]\n')


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The discovery tests' tiny environment, with every protocol knob set away from the
    defaults."""
    root = tmp_path_factory.mktemp("env")
    path = make_env(root)
    text = path.read_text()
    path.write_text(text[: text.index("[replay]")] + KNOBS)
    return path


class Captured(Exception):
    pass


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run a command until it would evaluate; what it would evaluate with."""
    seen: dict[str, Any] = {}

    def fake_evaluate(controller: Any, stores: Any, betas: Any, proto: EvalProtocol,
                      **kw: Any) -> Any:
        seen.update(proto=proto, betas=betas, stores=[str(s) for s in stores])
        raise Captured

    def fake_sweep(stores: Any, out_dir: Any, *, betas: Any, proto: EvalProtocol,
                   **kw: Any) -> Any:
        seen.update(proto=proto, betas=list(betas), stores=[str(s) for s in stores])
        raise Captured

    monkeypatch.setattr(autotts.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(autotts.sweep, "run_sweep", fake_sweep)
    monkeypatch.setattr(sys, "argv", ["autotts", *args])
    with pytest.raises(Captured):
        main()
    return seen


def test_precedence() -> None:
    env = type("E", (), {})()  # only what settings.env_layer reads
    env.draws_for = lambda split: 5 if split == "heldout" else 3
    env.protocol, env.branch_cap, env.probe_cost, env.budget = "subsample", 12, 7, None
    env.betas = [0.0, 1.0]
    none = settings.resolve(settings.EVAL)
    assert none.proto == EvalProtocol(draws=100) and none.betas == list(settings.EVAL.betas)
    assert set(none.sources.values()) == {"default"}
    s = settings.resolve(settings.SWEEP, env, "heldout", draws=9, seed=4, budget=0)
    assert s.proto == EvalProtocol(draws=9, protocol="subsample", pool=12, seed=4, probe_cost=7,
                               budget=0)
    assert s.betas == [0.0, 1.0]
    assert s.sources == {"draws": "flag", "protocol": "env", "pool": "env", "seed": "flag",
                         "probe_cost": "env", "budget": "flag", "betas": "env"}
    # A flag of 0 is a flag (not "not given"), and flags beat the environment.
    zero = settings.resolve(settings.EVAL, env, probe_cost=0, pool=3, betas=[0.5])
    assert zero.proto.probe_cost == 0 and zero.proto.pool == 3 and zero.betas == [0.5]
    assert settings.resolve(settings.EVAL, env, "search").proto.draws == 3


def test_cli_defaults_are_the_settings_defaults() -> None:
    assert tuple(parse_betas(DEFAULT_BETAS)) == settings.EVAL.betas


def test_eval_sweep_and_discover_agree(env_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The same environment file and no flags: one protocol and β grid in eval, sweep, compare
    and discover; flags given win in each."""
    env = load_env(env_file)
    ev = run_cli(["eval", "--controller", "sc", "--env", str(env_file)], monkeypatch)
    sw = run_cli(["sweep", "--env", str(env_file), "--out", str(tmp_path / "r")], monkeypatch)
    want = EvalProtocol(draws=3, protocol="subsample", pool=12, seed=0, probe_cost=7, budget=40000)
    assert ev["proto"] == sw["proto"] == want
    assert ev["betas"] == sw["betas"] == env.betas
    # Discovery: its loop evaluates every stage under DiscoverConfig.protocol (no other path).
    cfg = DiscoverConfig(env=str(env_file), run_dir=tmp_path / "run")
    assert cfg.protocol(env) == want
    # The held-out split: eval's --split heldout and discovery's held-out step.
    held = run_cli(["eval", "--controller", "sc", "--env", str(env_file), "--split", "heldout"],
                   monkeypatch)
    assert held["proto"] == cfg.protocol(env, "heldout") == EvalProtocol(
        draws=5, protocol="subsample", pool=12, seed=0, probe_cost=7, budget=40000)
    # Flags given win in all three.
    flags = ["--draws", "2", "--seed", "3", "--probe-cost", "0", "--pool", "4", "--budget",
             "100", "--protocol", "shuffle", "--betas", "0,1"]
    ev = run_cli(["eval", "--controller", "sc", "--env", str(env_file), *flags], monkeypatch)
    sw = run_cli(["sweep", "--env", str(env_file), "--out", str(tmp_path / "r"), *flags],
                 monkeypatch)
    assert ev["proto"] == sw["proto"] == EvalProtocol(draws=2, protocol="shuffle", pool=4, seed=3,
                                                  probe_cost=0, budget=100)
    assert ev["betas"] == sw["betas"] == [0.0, 1.0]
    # compare: the environment's protocol and grid, held-out groups at heldout_draws, its flags.
    cp = run_cli(["compare", "sc", "esc", "--env", str(env_file)], monkeypatch)
    assert cp["proto"] == want and cp["betas"] == env.betas
    cp = run_cli(["compare", "sc", "esc", "--env", str(env_file), "--split", "heldout"],
                 monkeypatch)
    assert cp["proto"] == held["proto"]
    cp = run_cli(["compare", "sc", "esc", "--env", str(env_file), "--draws", "2", "--seed", "3",
                  "--betas", "0,1"], monkeypatch)
    assert cp["proto"] == dataclasses.replace(want, draws=2, seed=3) and cp["betas"] == [0.0, 1.0]
    seeded = DiscoverConfig(env=str(env_file), run_dir=tmp_path / "run", seed=3)
    assert seeded.protocol(env).seed == 3 and seeded.protocol(env, draws=1).draws == 1


def test_sweep_takes_the_environment_protocol(env_file: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: `sweep --env` took only the environment's stores and ran the default protocol
    (20 shuffle draws, κ 0, no pool or budget) over the default β grid."""
    env = load_env(env_file)
    sw = run_cli(["sweep", "--env", str(env_file), "--out", str(tmp_path / "r")], monkeypatch)
    assert sw["stores"] == env.splits["search"] + env.splits["heldout"]
    assert sw["proto"].probe_cost == 7 and sw["proto"].budget == 40000
    assert sw["proto"].pool == 12 and sw["proto"].protocol == "subsample"
    assert sw["proto"].draws == 3 and sw["betas"] == [0.0, 0.5, 1.0]
    # Without an environment the sweep's own defaults hold.
    plain = run_cli(["sweep", "--store", str(env.splits["search"][0]), "--out",
                     str(tmp_path / "r")], monkeypatch)
    assert plain["proto"] == EvalProtocol(draws=20)
    assert plain["betas"] == list(settings.SWEEP.betas)


def test_sweep_report_names_the_protocol(env_file: Path, tmp_path: Path) -> None:
    """The sweep's report says which protocol it ran: pool, κ and budget where they are set;
    the default protocol reads as it always has."""
    env = load_env(env_file)
    s = settings.resolve(settings.SWEEP, env)
    assert s.describe() == "subsample, 3 draws, pool 12, κ = 7, budget 40,000"
    assert settings.describe_protocol(EvalProtocol(draws=20)) == "shuffle, 20 draws"
    paths, _, _ = autotts.sweep.run_sweep(env.splits["search"][:1], tmp_path / "rep",
                                          controllers=["sc"], betas=s.betas, proto=s.proto)
    assert "Protocol: subsample, 3 draws, pool 12, κ = 7, budget 40,000, β ∈ {0, 0.5, 1}" in (
        Path(paths.markdown).read_text())
