"""Shared pieces of the discovery tests: a tiny environment of synthetic stores, scripted
controller files, and the settings that point a run at the fake OpenAI server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from autotts.discover.config import DiscoverConfig, load_prices
from autotts.fsio import read_jsonl
from autotts.store import write_store
from autotts.synth import SynthParams, generate

PRICES = {"fake-model": {"input": 1.0, "output": 2.0}}

GOOD = '''\
"""Probe every branch each step; stop once the leader has held for `patience` steps."""

import numpy as np


def leader_of(latest):
    vals = latest[latest >= 0]
    if len(vals) == 0:
        return -1
    return int(np.bincount(vals).argmax())


class ProbeVote:
    NAME = "probe_vote"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"width": int(round(2 + 6 * b)), "patience": int(round(2 + 4 * b)),
                "max_steps": int(round(4 + 20 * b))}

    def __init__(self, width=4, patience=3, max_steps=10):
        self.width = int(width)
        self.patience = int(patience)
        self.max_steps = int(max_steps)

    def run(self, ep):
        for _ in range(min(self.width, ep.pool_size)):
            ep.branch(probe=True)
        leader, stable = -1, 0
        for step in range(self.max_steps):
            running = np.flatnonzero(ep.running)
            if len(running) == 0:
                ep.trace("stop", reason="all_done")
                return leader_of(ep.latest)
            for i in running:
                ep.advance(int(i))
            latest = ep.latest
            current = leader_of(latest[~ep.pruned])
            # Drop one dissenter per step once three or more branches are alive.
            alive = np.flatnonzero(ep.running)
            dissent = [int(i) for i in alive if latest[i] != current]
            if step >= 2 and len(alive) > 2 and dissent:
                ep.prune(dissent[0])
            stable = stable + 1 if current == leader else 1
            leader = current
            if stable >= self.patience:
                ep.trace("stop", reason="stable", step=step)
                return leader
        ep.trace("stop", reason="max_steps")
        return leader
'''

BROKEN = '''\
class Broken:
    NAME = "broken"

    @staticmethod
    def schedule(beta):
        return {"n": 1 + int(3 * beta)}

    def __init__(self, n=2):
        self.n = n

    def run(self, ep):
        answers = ep.read_new_many(self.n).tolist()
        return answers[self.n]  # IndexError: off by one
'''

FORBIDDEN = '''\
import os


class Sneaky:
    NAME = "sneaky"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
'''


def reply(source: str, note: str = "Here is my controller.") -> dict[str, Any]:
    return {"content": f"{note}\n\n```python\n{source}```\n"}


def several(*sources: str) -> dict[str, Any]:
    """A response with several controller files."""
    return {"content": "Some ideas.\n\n" + "\n".join(f"```python\n{s}```\n" for s in sources)}


GOOD_B = GOOD.replace('NAME = "probe_vote"', 'NAME = "probe_vote_b"')


def assert_same_rounds(a: Path, b: Path) -> None:
    """Two run dirs hold byte-identical rounds and final step, and the same index."""
    names_a = sorted(p.name for p in (a / "rounds").iterdir())
    names_b = sorted(p.name for p in (b / "rounds").iterdir())
    assert names_a == names_b
    for sub in [f"rounds/{n}" for n in names_a] + ["final"]:
        fa = sorted(str(p.relative_to(a / sub)) for p in (a / sub).rglob("*"))
        fb = sorted(str(p.relative_to(b / sub)) for p in (b / sub).rglob("*"))
        assert fa == fb, sub
        for f in (f for f in fa if (a / sub / f).is_file()):
            assert (a / sub / f).read_bytes() == (b / sub / f).read_bytes(), f"{sub}/{f} differs"

    def index(p: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "time"} for e in read_jsonl(p / "runs.jsonl")]

    assert index(a) == index(b)



def make_env(root: Path) -> Path:
    """Two search and two held-out synthetic stores (5 questions × 16 branches) and an env
    TOML pointing at them."""
    for split, seeds in (("search", (1, 2)), ("heldout", (3, 4))):
        for k in seeds:
            store = generate(SynthParams(questions=5, branches=16, seed=k, model="synth",
                                         benchmark=f"{split}{k}"))
            write_store(store, root / "stores" / f"{split}{k}")
    env = root / "tiny.toml"
    env.write_text(
        'name = "tiny"\n'
        'description = "synthetic stores for the discovery tests"\n'
        "[splits]\n"
        'search = ["stores/search1", "stores/search2"]\n'
        'heldout = ["stores/heldout3", "stores/heldout4"]\n'
        "[replay]\nprobe_cost = 0\n"
        "[evaluation]\nbetas = [0.0, 0.5, 1.0]\ndraws = 3\nprotocol = \"shuffle\"\n"
        "token_range = [2000, 200000]\n"
    )
    return env


def config(env: Path, run_dir: Path, url: str | None, **kw: Any) -> DiscoverConfig:
    base = dict(env=str(env), run_dir=run_dir, model="fake-model", base_url=url,
                api_key="test-key", rounds=3, workers=1, request_timeout=3.0,
                retry_base_s=0.01, max_attempts=3, max_tokens=1000,
                prices=load_prices(json.dumps(PRICES)))
    base.update(kw)
    return DiscoverConfig(**base)


def cli_env(url: str, **extra: str) -> dict[str, str]:
    """Environment variables for a `python -m autotts discover` subprocess."""
    cache = os.environ.get("AUTOTTS_CACHE_HOME")
    return {
        **({"AUTOTTS_CACHE_HOME": cache} if cache else {"AUTOTTS_BASELINE_CACHE": "0"}),
        "AUTOTTS_API_KEY": "test-key",
        "AUTOTTS_WORKERS": "1",
        "AUTOTTS_REQUEST_TIMEOUT": "3",
        "AUTOTTS_RETRY_BASE": "0.01",
        "AUTOTTS_MAX_ATTEMPTS": "3",
        "AUTOTTS_MAX_TOKENS": "1000",
        "AUTOTTS_PRICES": json.dumps(PRICES),
        **extra,
    }


# A fixture for the test modules that import it (an imported autouse fixture applies to the
# importing module only).


@pytest.fixture(scope="module", autouse=True)
def baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The runs' shared baseline cache lives in a temporary directory, not in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTTS_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield
