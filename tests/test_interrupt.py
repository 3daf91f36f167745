"""Ctrl-C (SIGINT) during a command: one line on stderr saying where it stopped, and for the
commands that resume (discover, collect, data fetch) that rerunning the same command resumes;
exit status 130; never click's "Aborted!" with status 1, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from discover_helpers import GOOD, GOOD_B, cli_env, make_env, reply

from autotts.discover.fakeserver import FakeOpenAI
from tests.test_cli_edges import cli

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "data" / "synthetic"

# A controller that sends its own process SIGINT, as Ctrl-C at the terminal does, mid-evaluation.
CTRL_C = '''
import os
import signal


class CtrlC:
    NAME = "ctrl_c"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        os.kill(os.getpid(), signal.SIGINT)
        return ep.read_new()
'''


@pytest.mark.parametrize("reading", ["plain", "typer"])
def test_eval_interrupted_by_sigint(tmp_path: Path, reading: str) -> None:
    """Both readings of `eval` (autotts/__main__.py without typer, autotts/cli.py with it)."""
    ctl = tmp_path / "ctrl_c.py"
    ctl.write_text(CTRL_C)
    entry = (["-m", "autotts"] if reading == "plain"
             else ["-c", "from autotts.cli import main; main()"])
    res = subprocess.run(
        [sys.executable, *entry, "eval", "--controller", str(ctl), "--store", str(SYNTH),
         "--draws", "1", "--betas", "0", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (res.returncode, res.stdout, res.stderr) == (130, "", "interrupted\n")
    assert not (tmp_path / "r.json").exists()


def test_any_command_interrupted_says_so_in_one_line(capsys, monkeypatch) -> None:
    import autotts.summary

    def ctrl_c(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(autotts.summary, "summarize", ctrl_c)
    assert cli(["inspect", str(SYNTH)], capsys, monkeypatch) == (130, "", "interrupted\n")


def test_data_fetch_interrupted_says_a_rerun_resumes(tmp_path, capsys, monkeypatch) -> None:
    import autotts.datasets

    def ctrl_c(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(autotts.datasets, "fetch", ctrl_c)
    code, out, err = cli(["data", "fetch", "Qwen3-8B/aime24", "--to", str(tmp_path)], capsys,
                         monkeypatch)
    assert (code, out) == (130, "")
    assert err == ("interrupted: a partly downloaded file is kept (.part); rerun the same "
                   "command to resume\n")


def test_collect_interrupted_says_where_and_resumes(tmp_path, capsys, monkeypatch) -> None:
    from autotts.collect import FakeEngine

    q = tmp_path / "qs.jsonl"
    q.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i}+{i}?",
                                     "answer": str(2 * i)}) + "\n" for i in range(4)))
    out = tmp_path / "store"
    args = ["collect", "--model", "fake", "--questions", str(q), "--out", str(out),
            "--backend", "fake", "--n", "2", "--delta", "32", "--max-thinking-tokens", "128",
            "--inflight", "1"]
    real, calls = FakeEngine.generate, []

    def generate(self: FakeEngine, requests: Any) -> Any:
        calls.append(len(requests))
        if len(calls) == 12:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of an engine call
        return real(self, requests)

    monkeypatch.setattr(FakeEngine, "generate", generate)
    code, stdout, err = cli(args, capsys, monkeypatch)
    finished = sorted(p.name for p in (tmp_path / "store.collect" / "q").iterdir())
    assert code == 130 and stdout == "" and 0 < len(finished) < 4
    assert err.splitlines()[-1] == (
        f"interrupted: {len(finished)} question(s) finished in {tmp_path / 'store.collect'}; "
        "rerun the same command to resume")
    assert "Traceback" not in err and "Aborted" not in err
    monkeypatch.setattr(FakeEngine, "generate", real)
    code, stdout, err = cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert f"{4 - len(finished)} question(s) collected now, 4/4 finished" in stdout
    assert (out / "manifest.json").is_file()


def test_discover_interrupted_says_where_and_resumes(tmp_path: Path) -> None:
    """SIGINT in round 2, once the model has answered: round 1 is kept, the summary says
    'interrupted', and the same command again finishes the run without asking the model twice."""
    env_file = make_env(tmp_path / "env")
    run_dir = tmp_path / "run"

    def run(url: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "autotts", "discover", "--env", str(env_file), "--run-dir",
             str(run_dir), "--model", "fake-model", "--base-url", url, "--rounds", "2"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
            env={**os.environ, **cli_env(url, **extra)})

    with FakeOpenAI([reply(GOOD), reply(GOOD_B)]) as server:
        proc = run(server.url, AUTOTTS_DISCOVER_FAULT="int:2:response")
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr.splitlines()[-1] == (
            f"interrupted: 1 round(s) complete in {run_dir}; rerun the same command to resume")
        assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["status"], summary["rounds_completed"]) == ("interrupted", 1)
        proc = run(server.url)
        assert proc.returncode == 0, proc.stderr
        assert server.count == 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
