"""Built-in controllers and environments also work from an installed wheel, not only a checkout."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import require_module

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, autotts
from autotts.controller import builtin_names
from autotts.envdef import load_env
from autotts.evaluate import EvalProtocol, evaluate
from autotts.synth import SynthParams, generate
store = generate(SynthParams(questions=4, branches=8, seed=1))
rows = evaluate("parallel_probe", [store], [0.5], EvalProtocol(draws=2)).rows
from autotts.contract import contract_text
print(json.dumps({"file": autotts.__file__, "builtins": builtin_names(),
                  "contract": "@staticmethod" in contract_text(),
                  "env": load_env("aime-qwen3").name, "accuracy": rows[0]["accuracy"]}))
"""


@pytest.mark.slow
def test_builtins_work_from_the_wheel(tmp_path: Path):
    require_module("hatchling")
    build = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path / "dist")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("autotts-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["file"].startswith(str(site))  # the wheel, not the checkout
    assert {"sc", "asc", "esc", "parallel_probe", "cmc"} <= set(out["builtins"])
    assert out["env"] == "aime-qwen3"
    assert out["contract"]  # autotts/contract.md ships inside the wheel
