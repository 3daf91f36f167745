"""`autotts eval --env`: the environment supplies the protocol, explicit options win."""

from __future__ import annotations

import json
from pathlib import Path

from discover_helpers import make_env
from typer.testing import CliRunner

from autotts.cli import app


def run_eval(env: Path, out: Path, *extra: str) -> list[dict]:
    res = CliRunner().invoke(app, ["eval", "--controller", "parallel_probe", "--env", str(env), "--betas",
                                   "0.5", "--json", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_env_protocol_and_explicit_options(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    text = env.read_text().replace("probe_cost = 0", "probe_cost = 300")
    env.write_text(text.replace("draws = 3\n", "draws = 3\nheldout_draws = 5\n"))
    search = run_eval(env, tmp_path / "search.json")
    assert {r["draws"] for r in search} == {3}
    held = run_eval(env, tmp_path / "held.json", "--split", "heldout")
    assert {r["draws"] for r in held} == {5}  # the environment's held-out draws
    assert {r["store"] for r in held} == {"synth/heldout3", "synth/heldout4"}
    free = run_eval(env, tmp_path / "free.json", "--probe-cost", "0")  # 0 overrides 300
    assert all(f["tokens"] < s["tokens"] for f, s in zip(free, search, strict=True))
