"""`autotts eval --env`: the environment supplies the protocol, explicit options win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


# ---- the plain reading of `eval`'s arguments (autotts/evalcli.py), typer's twin ----------------

PLAIN_CASES = [
    ["--controller", "sc", "--store", "a.json"],
    ["--controller=asc", "--store=x", "--store", "y", "--set", "threshold=0.9", "--set=max_samples=8",
     "--draws", "7", "--seed=3", "--pool", "+12", "--probe-cost", " 5 ", "--budget", "1_000"],
    ["--store", "s", "--controller", "esc", "--betas", "0,1", "--protocol", "subsample", "--json",
     "o.json", "--json-episodes", "--traces", "t.jsonl", "--episodes", "e.jsonl"],
    ["--controller", "sc", "--env", "e.toml", "--split", "heldout", "--no-sandbox", "--workers", "2",
     "--executor", "ray", "--ray-address", "auto", "--errors", "record", "--allow-weak-sandbox"],
    ["--controller", "", "--store", ""],
]
TYPER_ONLY = [
    ["--help"], ["--store", "a"], ["--controller", "sc", "--draws", "x"],
    ["--controller", "sc", "--draws", "1", "--draws", "2"], ["--controller", "sc", "--sandbox=1"],
    ["--controller", "sc", "extra"], ["--controller", "sc", "--"], ["--controller"],
    ["--controller", "sc", "--stor", "a"], ["--controller", "sc", "--draws", "-3"],
    ["--controller", "sc", "--sandbox", "--no-sandbox"], ["-h"], ["--controller", "sc", "--pool", "1.5"],
]


def _typer_kwargs(args: list[str], monkeypatch) -> dict:
    import inspect

    from autotts import cli, evalcli

    got: list[dict] = []
    sig = inspect.signature(evalcli.run_eval)
    monkeypatch.setattr(cli, "run_eval", lambda *a, **k: got.append(
        dict(sig.bind(*a, **k).arguments)))
    res = CliRunner().invoke(cli.app, ["eval", *args])
    assert res.exit_code == 0, res.output
    return got[0]


@pytest.mark.parametrize("args", PLAIN_CASES)
def test_the_plain_reading_gives_typers_arguments(args, monkeypatch, tmp_path) -> None:
    import inspect

    from autotts.evalcli import plain_eval_args, run_eval

    monkeypatch.chdir(tmp_path)
    plain = plain_eval_args(args)
    assert plain is not None
    defaults = {k: p.default for k, p in inspect.signature(run_eval).parameters.items()
                if p.default is not inspect.Parameter.empty}
    want = _typer_kwargs(args, monkeypatch)
    for k in ("store", "set_"):  # typer passes an empty tuple or None for a list not given
        if not want.get(k):
            want[k] = None
    assert {**defaults, **plain} == want


@pytest.mark.parametrize("args", TYPER_ONLY)
def test_what_the_plain_reading_leaves_to_typer(args) -> None:
    from autotts.evalcli import plain_eval_args

    assert plain_eval_args(args) is None


def test_an_unreadable_path_is_left_to_typer(tmp_path) -> None:
    from autotts.evalcli import plain_eval_args

    f = tmp_path / "locked.json"
    f.write_text("[]")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):
            pytest.skip("this user reads any file (root)")
        assert plain_eval_args(["--controller", "sc", "--store", str(f)]) is None
    finally:
        f.chmod(0o644)


def test_the_plain_reading_knows_every_option_of_the_command() -> None:
    """Every option of the typer command is in the plain reading's tables with the same keyword
    and repeatability (an option it lacks would only send runs to typer: this says so)."""
    import typer.main

    from autotts import cli, evalcli

    cmd = typer.main.get_command(cli.app).commands["eval"]
    valued, flags = {}, {}
    for p in cmd.params:
        if getattr(p, "is_flag", False):
            flags.update({o: (p.name, True) for o in p.opts})
            flags.update({o: (p.name, False) for o in p.secondary_opts})
        else:
            valued.update({o: (p.name, p.multiple) for o in p.opts})
    assert {k: (v[0], v[2]) for k, v in evalcli._VALUED.items()} == valued
    assert flags == evalcli._FLAGS


def test_python_m_autotts_eval_runs_without_typer(tmp_path) -> None:
    """The same printed table and JSON through either reading, and the plain one imports no
    typer."""
    root = Path(__file__).resolve().parents[1]
    synth = str(root / "data" / "synthetic")
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "120"}
    args = ["eval", "--controller", "asc", "--store", synth, "--draws", "2", "--betas", "0,1"]
    plain = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; sys.argv[0] = 'autotts'; "
         "runpy.run_module('autotts', run_name='__main__'); print('typer' in sys.modules)",
         *args, "--json", str(tmp_path / "a.json")], capture_output=True, text=True, env=env,
        cwd=root, check=True)
    typer_run = subprocess.run(
        [sys.executable, "-c", "from autotts.cli import main; main()", *args, "--json",
         str(tmp_path / "b.json")], capture_output=True, text=True, env=env, cwd=root, check=True)
    assert plain.stdout.endswith("False\n")
    assert plain.stdout[: -len("False\n")] == typer_run.stdout and plain.stderr == typer_run.stderr
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


GC_PROBE = '''
import gc


class GcProbe:
    NAME = "gcprobe"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        if not gc.isenabled():
            raise RuntimeError("garbage collection is paused while episodes run")
        return ep.read_new()
'''


@pytest.mark.parametrize("reading", ["plain", "typer"])
def test_eval_collects_garbage_while_episodes_run(tmp_path, reading) -> None:
    """`eval` pauses garbage collection while it starts (imports, loads: evalcli.pause_gc) and
    resumes it before the first episode, however it ends: the controller's episodes run with
    collection on, and an error before them leaves it on as well."""
    root = Path(__file__).resolve().parents[1]
    probe = tmp_path / "gcprobe.py"
    probe.write_text(GC_PROBE)
    synth = str(root / "data" / "synthetic")
    main = ("import runpy, sys; sys.argv[0] = 'autotts'; runpy.run_module('autotts', "
            "run_name='__main__')" if reading == "plain" else
            "import sys; from autotts.cli import main; main()")
    code = (f"import gc, sys\ntry:\n    {main}\nexcept SystemExit as e:\n    code = e.code\n"
            "else:\n    code = 0\nprint('gc', gc.isenabled(), code)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    for args, want in (([str(probe), "--store", synth, "--draws", "1"], 0),
                       ([str(probe), "--store", str(tmp_path / "none.json")], 2)):
        res = subprocess.run([sys.executable, "-c", code, "eval", "--controller", *args],
                             capture_output=True, text=True, env=env, cwd=root)
        assert res.stdout.splitlines()[-1] == f"gc True {want}", res.stdout + res.stderr
