"""Shared fixtures. The published replay comes from the data folder ($AUTOTTS_DATA, else the user
cache folder that `autotts data fetch` fills); under CI a missing file fails the test instead of
skipping it."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest

from autotts.paths import data_dir, reference_dir
from autotts.store import Store, from_autotts_records

MODELS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B")
BENCHES = ("aime24", "aime25")
REFERENCE_FILES = [f"{m}/{b}.json" for m in MODELS for b in BENCHES]


def skip_or_fail(msg: str) -> None:
    """Skip on a developer's machine; under CI (CI=true) what a test needs must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def require(path: Path) -> Path:
    if not path.exists():
        from autotts.datasets import is_published_path, missing_hint

        how = missing_hint() if is_published_path(path) else "set AUTOTTS_DATA to a folder with it"
        skip_or_fail(f"data missing: {path}; {how}")
    return path


def require_module(name: str) -> Any:
    """pytest.importorskip, except under CI, where every dev-extra package is installed."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name)


def reference_file(name: str) -> Path:
    return require(data_dir() / "autotts-replay" / name)


def reference_csv() -> Path:
    return require(reference_dir() / "reference_evaluator_outputs.csv")


@pytest.fixture(params=REFERENCE_FILES)
def reference_json(request: pytest.FixtureRequest) -> Path:
    return reference_file(request.param)


def branch(probes: list[str], tokens: int, final: str) -> list[Any]:
    return [list(probes), int(tokens), final]


def make_store(
    questions: list[tuple[str, list[list[Any]]]],
    *,
    delta: int = 10,
    answers: str = "exact",
    model: str = "tiny",
    benchmark: str = "toy",
) -> Store:
    """A store from (gold, [[probes, tokens, final], ...]) per question."""
    records = [
        {
            "question": f"q{i}",
            "gold_answer": gold,
            "probe_freq": delta,
            "final_answers_trace": [b[2] for b in branches],
            "each_branch": branches,
        }
        for i, (gold, branches) in enumerate(questions)
    ]
    return from_autotts_records(records, model=model, benchmark=benchmark, answers=answers)
