"""Episodes in lockstep (docs/batch.md): `EpisodeBatch` against `Episode`, and every built-in's
run_batch against its run.

The batch handle is a second implementation of the replay semantics for speed, so it is fuzzed in
lockstep against the reference handle: random stores (L = 0 branches, T <= L·Δ, math stores' -1,
an ERR class), κ, budgets, partial pools, random acting rows, masks that name unopened, pruned and
finished branches. After every action every episode agrees with its own Episode on the outcome
(the same refusal message, or the same return values) and on the whole revealed state, and the
answer ids map to the same store classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autotts import controller as ctl
from autotts.batch import EpisodeBatch
from autotts.engine import Episode, InvalidAction, Question, store_class
from autotts.evaluate import EvalProtocol, evaluate
from autotts.store import open_store
from autotts.units import EvaluationError
from tests.test_semantics_fuzz import random_question

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "data" / "synthetic"
PORTED = ("sc", "asc", "esc", "parallel_probe")
FUZZ_BATCHES = int(os.environ.get("AUTOTTS_FUZZ_EPISODES", "60"))


def _check_state(batch: EpisodeBatch, eps: list[Episode], dead: set[int]) -> None:
    assert set(batch.refusals()) == dead
    assert batch.live.tolist() == [e not in dead for e in range(len(eps))]
    for e, ep in enumerate(eps):
        k = ep.num_opened
        assert batch.num_opened[e] == k
        assert batch.tokens[e] == ep.tokens
        assert batch.generated_tokens[e] == ep.generated_tokens
        assert batch.num_probes[e] == ep.num_probes
        assert batch.num_actions[e] == ep.num_actions
        for name in ("depths", "finished", "pruned", "running", "latest", "final_answers"):
            got = getattr(batch, name)[e]
            assert got[:k].tolist() == getattr(ep, name).tolist(), name
            assert not got[k:].any() if name not in ("latest", "final_answers") else (
                got[k:] == -1).all()
        ids = np.arange(-2, 2 * batch.width + 3)
        for a in ids.tolist():
            row = np.full(len(eps), -1)
            row[e] = a
            assert batch.store_classes(row)[e] == store_class(ep, a), a


def _rows(rng: np.random.Generator, live: np.ndarray):
    """Acting rows in each accepted form: None (every live episode), a bool mask, indices."""
    form = rng.integers(3)
    if form == 0:
        return None, live.copy()
    mask = rng.random(len(live)) < 0.7
    if form == 1:
        return mask, mask & live
    return np.flatnonzero(mask), mask & live


def _branch_mask(rng: np.random.Generator, batch: EpisodeBatch) -> np.ndarray:
    """Mostly running branches, sometimes a pruned, finished or unopened one."""
    m = batch.running & (rng.random((batch.size, batch.width)) < 0.6)
    if rng.random() < 0.25:
        m |= rng.random((batch.size, batch.width)) < 0.05
    return m


def _per_episode(ep: Episode, name: str, arg, extra):
    if name == "read_new":
        return ep.read_new()
    if name == "read_new_many":
        return ep.read_new_many(arg).tolist()
    if name == "branch_many":
        return ep.branch_many(arg, probe=extra).tolist()
    if name == "advance_many":
        return ep.advance_many(np.flatnonzero(arg).astype(np.int64), times=extra).tolist()
    return ep.prune_many(np.flatnonzero(arg).astype(np.int64))


def _one_batch(seed: int) -> int:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 7))
    questions, orders = [], []
    for _ in range(size):
        data, _, _ = random_question(rng)
        q = Question(data, 0)
        m = q.num_branches
        order = rng.permutation(m)[: int(rng.integers(1, m + 1))]
        questions.append(q)
        orders.append(order)
    kappa = int(rng.choice([0, 7]))
    budget = None if rng.random() < 0.5 else int(rng.integers(0, 120))
    batch = EpisodeBatch(questions, orders, probe_cost=kappa, budget=budget)
    eps = [Episode(q, o, probe_cost=kappa, budget=budget) for q, o in zip(questions, orders,
                                                                            strict=True)]
    dead: set[int] = set()
    for _ in range(int(rng.integers(1, 25))):
        name = str(rng.choice(["read_new", "read_new_many", "branch_many", "advance_many",
                               "prune_many"], p=[0.15, 0.15, 0.2, 0.35, 0.15]))
        rows, acting = _rows(rng, batch.live)
        extra = None
        if name in ("read_new_many", "branch_many"):
            left = batch.pool_size - batch.num_opened
            if rng.random() < 0.5:
                arg = int(rng.integers(0, 3))
                args = [arg] * size
            else:
                arr = np.maximum(0, left - rng.integers(-1, 3, size=size))
                arg, args = arr, arr.tolist()
            extra = bool(rng.random() < 0.5)
        elif name in ("advance_many", "prune_many"):
            full = _branch_mask(rng, batch)
            if rng.random() < 0.3:  # fewer columns than the batch's width: the rest unselected
                full = full[:, : int(rng.integers(1, batch.width + 1))]
            args = list(full)
            arg = full[rows] if rows is not None and rows.dtype != bool else full
            extra = int(rng.choice([1, 1, 2, 5]))
        else:
            arg, args = None, [None] * size
        if name == "read_new":
            got = batch.read_new(rows=rows)
        elif name == "read_new_many":
            got = batch.read_new_many(arg, rows=rows)
        elif name == "branch_many":
            got = batch.branch_many(arg, probe=extra, rows=rows)
        elif name == "advance_many":
            got = batch.advance_many(arg, times=extra, rows=rows)
        else:
            got = batch.prune_many(arg, rows=rows)
        for e, ep in enumerate(eps):
            if not acting[e] or e in dead:
                continue
            try:
                want = _per_episode(ep, name, args[e], extra)
            except InvalidAction as exc:
                assert batch.refusals().get(e) == str(exc), (name, e)
                dead.add(e)
                continue
            assert e not in batch.refusals(), (name, e, batch.refusals()[e])
            if name == "read_new":
                assert got[e] == want
            elif name == "read_new_many":
                assert got[e, : len(want)].tolist() == want
                assert (got[e, len(want):] == -1).all()
            elif name == "advance_many":
                idx = np.flatnonzero(args[e])
                assert got[e, idx].tolist() == want
        _check_state(batch, eps, dead)
    return len(dead)


@pytest.mark.parametrize("chunk", range(4))
def test_batch_handle_matches_episode_in_lockstep(chunk):
    refused = sum(_one_batch(seed) for seed in range(chunk, FUZZ_BATCHES, 4))
    assert refused > 0, "the fuzz should reach refusals"


def test_batch_refuses_malformed_arguments_for_the_whole_batch():
    data, _, _ = random_question(np.random.default_rng(3))
    q = Question(data, 0)
    batch = EpisodeBatch([q, q], [np.arange(q.num_branches)] * 2)
    with pytest.raises(InvalidAction, match="bool mask of shape"):
        batch.advance_many(np.zeros((1, batch.width), dtype=bool))
    with pytest.raises(InvalidAction, match="bool mask of shape"):
        batch.advance_many(np.zeros((2, batch.width + 1), dtype=bool))
    with pytest.raises(InvalidAction, match="bool mask of shape"):
        batch.prune_many(np.zeros((2, 0), dtype=bool))
    with pytest.raises(InvalidAction, match="ascending"):
        batch.prune_many(np.zeros((2, batch.width), dtype=bool), rows=[1, 0])
    with pytest.raises(InvalidAction, match="must be an integer"):
        batch.read_new_many(1.0)
    batch.close()
    with pytest.raises(InvalidAction, match="ended"):
        batch.read_new()


# ---- run_batch against run ---------------------------------------------------------------------


def _stores():
    stores = [open_store(SYNTH)]
    from autotts.paths import data_dir

    for name in ("Qwen3-0.6B/aime24.json", "Qwen3-8B/aime25.json"):
        path = data_dir() / "autotts-replay" / name
        if path.is_file():
            stores.append(open_store(path))
    return stores


PROTOCOLS = [
    EvalProtocol(draws=4),
    EvalProtocol(draws=3, probe_cost=200),
    EvalProtocol(draws=3, budget=40_000),
    EvalProtocol(draws=3, budget=150_000, probe_cost=50),
    EvalProtocol(draws=4, protocol="subsample", pool=13, seed=5),
    EvalProtocol(draws=2, pool=9),
]


@pytest.mark.parametrize("name", PORTED)
@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: f"{p.protocol}-k{p.probe_cost}-"
                         f"B{p.budget}-n{p.pool}")
def test_run_batch_answers_exactly_as_run(name, proto):
    assert ctl.load(name).batched
    stores = _stores()
    kw = dict(episodes=True, on_error="record")
    a = evaluate(name, stores, [0.0, 0.3, 1.0], proto, batch=True, **kw)
    b = evaluate(name, stores, [0.0, 0.3, 1.0], proto, batch=False, **kw)
    assert a.rows == b.rows
    assert a.episodes == b.episodes
    assert a.errors == b.errors
    if proto.budget is not None and name != "sc":
        assert a.errors, "the budget variant should reach refusals"


@pytest.mark.parametrize("name", PORTED)
def test_discovery_is_shown_the_per_episode_controller_only(name):
    spec = ctl.load(name)
    source = Path(spec.path).read_text()
    shown = ctl.per_episode_source(source)
    assert "run_batch" in source and "run_batch" not in shown and "def run(" in shown
    assert shown.endswith("\n") and source.startswith(shown)
    plain = ctl.load_source(shown, f"/shown/{name}.py")
    assert plain.name == name and not plain.batched


def _controller(tmp_path: Path, body: str) -> str:
    src = (
        "class C:\n"
        "    NAME = 'c'\n"
        "    @staticmethod\n"
        "    def schedule(beta):\n"
        "        return {}\n"
        "    def run(self, ep):\n"
        "        return ep.read_new()\n"
        "    def run_batch(self, batch):\n"
        f"        {body}\n"
    )
    path = tmp_path / "c.py"
    path.write_text(src)
    return str(path)


@pytest.mark.parametrize("body, kind", [
    ("raise ValueError('boom')", "exception"),
    ("return [1, 2]", "non_answer"),
    ("return 'x'", "non_answer"),
    ("batch.read_new(); return [1.5] * batch.size", "non_answer"),
    ("batch.advance_many([[True]])", "invalid_action"),
])
def test_a_broken_run_batch_reports_the_error_kinds_of_run(tmp_path, body, kind):
    path = _controller(tmp_path, body)
    store = open_store(SYNTH)
    res = evaluate(path, [store], None, EvalProtocol(draws=2), on_error="record")
    assert res.errors and {e["kind"] for e in res.errors} == {kind}
    assert len(res.errors) == 2 * store.replay().num_questions
    assert res.rows[0]["accuracy"] == 0.0
    with pytest.raises(EvaluationError, match=kind):
        evaluate(path, [store], None, EvalProtocol(draws=2))


def test_a_run_batch_with_per_episode_bad_answers_spoils_only_those(tmp_path):
    body = "a = batch.read_new(); out = a.tolist(); out[0] = True; return out"
    path = _controller(tmp_path, body)
    store = open_store(SYNTH)
    # One draw: one work unit, whose first episode is question 0.
    a = evaluate(path, [store], None, EvalProtocol(draws=1), on_error="record", episodes=True)
    b = evaluate(path, [store], None, EvalProtocol(draws=1), on_error="record", episodes=True,
                 batch=False)
    assert [(e["question"], e["draw"], e["kind"]) for e in a.errors] == [(0, 0, "non_answer")]
    assert not b.errors
    assert a.episodes[1:] == b.episodes[1:]


def test_traces_take_the_per_episode_path_with_the_same_results():
    store = open_store(SYNTH)
    a = evaluate("parallel_probe", [store], [0.5], EvalProtocol(draws=2), traces=True, episodes=True)
    b = evaluate("parallel_probe", [store], [0.5], EvalProtocol(draws=2), episodes=True)
    assert a.traces and all(t["events"] for t in a.traces)
    assert a.rows == b.rows and a.episodes == b.episodes
