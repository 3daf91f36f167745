"""The trace digest pinned against a golden file (issue 17 item 2): the digest's branch ledger
must come out the same whichever replay model computes it. The golden file was generated from the
digest of commit cbefa89 (the second replay model, before the engine replaced it):

    PYTHONPATH=. AUTOTTS_DATA=/work/shared/data python tests/test_digest_golden.py --write

Each case is a real candidate's sweep with traces, as discovery runs it (two traced draws per
(store, β)); probe costs κ = 0 and κ = 7 (with κ > 0 a probe's cost shows in every ledger sum).
Besides the digest itself, each case pins a hash of every traced episode's ledger (opened
branches, per-branch spent tokens, depths, finished and pruned flags)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotts.discover.digest import SearchData, attach_answers, ledger, make_digest
from autotts.evaluate import EvalProtocol, evaluate
from autotts.paths import data_dir
from autotts.store import open_store

GOLDEN = Path(__file__).parent / "golden" / "digest.json"
REPO = Path(__file__).resolve().parent.parent
SYNTHETIC = REPO / "data" / "synthetic"
AIME = "autotts-replay/Qwen3-1.7B/aime24.json"  # under the data folder, when it has it
BETAS = [0.0, 0.5, 1.0]
# sc/esc: read_new(_many) and extend; asc: read_new one by one; answer_convergence: branch +
# single advances (probe-heavy); parallel_probe, st_bon, cmc: branch_many(probe=True),
# advance_many and batch prunes (st_bon also reads a branch to its end).
CASES = [
    ("synthetic", "sc", 0), ("synthetic", "esc", 0), ("synthetic", "asc", 0),
    ("synthetic", "answer_convergence", 0), ("synthetic", "parallel_probe", 0),
    ("synthetic", "st_bon", 0), ("synthetic", "cmc", 0),
    ("synthetic", "answer_convergence", 7), ("synthetic", "parallel_probe", 7),
    ("synthetic", "st_bon", 7), ("synthetic", "cmc", 7),
    ("aime", "esc", 0), ("aime", "parallel_probe", 0), ("aime", "cmc", 7),
]


def _store_path(which: str) -> Path:
    return SYNTHETIC if which == "synthetic" else data_dir() / AIME


def _ledger_hash(search: SearchData, traces: list[dict[str, Any]], kappa: int) -> str:
    h = hashlib.sha256()
    for t in traces:
        s = search.index[t["store"]]
        q, draw = int(t["question"]), int(t["draw"])
        led = ledger(t["events"], search.question(s, q), search.order(s, draw, q), kappa)
        if led is None:
            h.update(b"unresolved;")
            continue
        parts = [led["opened"], led["tokens"]] + [np.asarray(led[k]).astype(np.int64).tolist()
                                                  for k in ("spent", "depth", "finished",
                                                            "pruned")]
        h.update(json.dumps(parts).encode() + b";")
    return h.hexdigest()


def compute(which: str, controller: str, kappa: int) -> dict[str, Any]:
    store = open_store(_store_path(which))
    proto = EvalProtocol(draws=2, probe_cost=kappa)
    ev = evaluate(controller, [store], BETAS, proto, episodes=True, traces=True)
    traces = ev.traces or []
    attach_answers(traces, ev.episodes or [])
    search = SearchData([store], proto)
    digest = make_digest(search, ev.rows, ev.episodes, traces)
    # Through JSON, as digest.json is written: tuples and numpy scalars compare as they read.
    return {"digest": json.loads(json.dumps(digest, sort_keys=True)),
            "ledger_sha256": _ledger_hash(search, traces, kappa)}


def _key(which: str, controller: str, kappa: int) -> str:
    return f"{which}/{controller}/kappa={kappa}"


@pytest.mark.parametrize(("which", "controller", "kappa"), CASES,
                         ids=[_key(*c) for c in CASES])
def test_digest_matches_golden(which: str, controller: str, kappa: int) -> None:
    golden = json.loads(GOLDEN.read_text())
    key = _key(which, controller, kappa)
    if not _store_path(which).exists():
        pytest.skip(f"{_store_path(which)} is not in the data folder")
    assert key in golden, f"{key} missing from {GOLDEN}: regenerate it"
    assert compute(which, controller, kappa) == golden[key]


def test_golden_file_is_not_trivial() -> None:
    """Every case resolves most of its traces (else the pinned ledger would test nothing)."""
    golden = json.loads(GOLDEN.read_text())
    for key, case in golden.items():
        for name, d in case["digest"]["stores"].items():
            assert d["resolved_episodes"] == d["traced_episodes"] > 0, (key, name)
    pruning = [k for k, c in golden.items()
               if any(d["episodes_with_pruning"] for d in c["digest"]["stores"].values())]
    assert pruning, "no case prunes"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    out = {}
    for c in CASES:
        if _store_path(c[0]).exists():
            out[_key(*c)] = compute(*c)
            print(_key(*c), file=sys.stderr)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
