"""What the sandbox does to be cheap keeps its numbers: masks cross the wire as masks, and a
sweep that traces only its first draws gives the untraced sweep's numbers and the separate
traced run's traces."""

from __future__ import annotations

import numpy as np
import pytest

from autotts.evaluate import EvalProtocol, evaluate
from autotts.sandbox import evaluate_sandboxed
from autotts.sandbox.judge import ProtocolError
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import _busy_task, json_round

STORE = synthetic_store()

MASKS = '''
import numpy as np


class Masks:
    NAME = "masks"

    @staticmethod
    def schedule(beta):
        return {"width": 2 + int(6 * beta)}

    def __init__(self, width=4):
        self.width = int(width)

    def run(self, ep):
        ep.branch_many(min(self.width, ep.pool_size), probe=True)
        for step in range(8):
            running = ep.running
            if not running.any():
                break
            if step == 3 and running.sum() > 2:
                ep.prune_many(running & (np.arange(len(running)) % 2 == 1))
                continue
            ep.trace("step", n=int(running.sum()))
            ep.advance_many(running)
        if step == 7 and ep.num_opened > 1:
            bad = np.ones(ep.num_opened + 1, dtype=bool)  # one entry too many: refused
            try:
                ep.advance_many(bad)
            except Exception as e:
                ep.trace("refused", why=str(e)[:40])
        vals = ep.latest[ep.latest >= 0]
        return int(np.bincount(vals).argmax()) if len(vals) else -1
'''


@pytest.mark.usefixtures("parent")
def test_masks_give_in_process_numbers_and_refusals(tmp_path):
    path = tmp_path / "masks.py"
    path.write_text(MASKS)
    proto = EvalProtocol(draws=3)
    a = evaluate(str(path), [STORE], [0.0, 0.5, 1.0], proto, episodes=True, traces=True,
                 on_error="record")
    b = evaluate_sandboxed(MASKS, [STORE], [0.0, 0.5, 1.0], proto, episodes=True, traces=True,
                           on_error="record", limits=FAST, filename=str(path))
    assert a.rows == b.rows and a.episodes == b.episodes and a.errors == b.errors
    assert a.traces == b.traces
    assert any(e["ev"] == "refused" for t in a.traces for e in t["events"])


@pytest.mark.usefixtures("parent")
def test_traced_draws_within_a_sweep(tmp_path):
    path = tmp_path / "masks.py"
    path.write_text(MASKS)
    betas = [0.0, 0.5, 1.0]
    kw = {"episodes": True, "on_error": "record", "limits": FAST, "filename": str(path)}
    sweep = evaluate_sandboxed(MASKS, [STORE], betas, EvalProtocol(draws=5), **kw)
    traced = evaluate_sandboxed(MASKS, [STORE], betas, EvalProtocol(draws=2), traces=True, **kw)
    both = evaluate_sandboxed(MASKS, [STORE], betas, EvalProtocol(draws=5), traces=True,
                              trace_draws=2, **kw)
    assert both.rows == sweep.rows and both.episodes == sweep.episodes
    assert both.traces == traced.traces
    assert {t["draw"] for t in both.traces} == {0, 1}


def test_forged_masks_are_protocol_errors():
    task = _busy_task()
    slot = sorted(task.judge.live)[0]
    json_round(task, {"t": "round", "m": [[slot, "branch_many", [2, True]]]})
    ok = json_round(task, {"t": "round", "m": [[slot, "advance_many", [["?", 2], 1]]]},
                       [np.zeros(0, np.int32), np.array([True, False])])
    assert ok["t"] == "reply" and len(ok["m"]) == 1  # answered (done, or refused by the engine)
    for m, arrays in (
        ([[slot, "advance_many", [["?", 3], 1]]], [np.zeros(0, np.int32), np.ones(2, bool)]),
        ([[slot, "advance_many", [["?", 1], 1]]], [np.zeros(0, np.int32)]),
        ([[slot, "prune_many", [["?", 1]]]], [np.zeros(0, np.int32), np.ones(1, np.int32)]),
        ([[slot, "prune_many", [["?", 1]]]],
         [np.zeros(0, np.int32), np.ones(1, bool), np.ones(1, bool)]),
    ):
        with pytest.raises(ProtocolError):
            json_round(_busy_task_with(slot), {"t": "round", "m": m}, arrays)


def _busy_task_with(slot: int):
    task = _busy_task()
    json_round(task, {"t": "round", "m": [[slot, "branch_many", [2, True]]]})
    return task


def test_folded_traces_give_the_digest_of_a_separate_traced_run(tmp_path, monkeypatch):
    """The loop traces the digest's draws within the sweep; with fold_traces off it sweeps
    untraced and traces separately, as before. Both give the same verdict, results and digest."""
    from autotts.discover.candidates import subset_store
    from autotts.discover.loop import Discovery
    from tests.discover_helpers import GOOD, config, make_env

    env = make_env(tmp_path)
    d = Discovery(config(env, tmp_path / "run", None, trace_draws=2))
    stages: list[tuple[str, bool, object]] = []
    be = d.backend
    real = be.evaluate

    def record(*a, **k):
        stages.append((k["stage"], bool(k.get("traces")), k.get("trace_draws")))
        return real(*a, **k)

    monkeypatch.setattr(be, "evaluate", record)
    smoke = subset_store(d.search_stores[0], d.cfg.smoke_questions)
    out = {}
    for name, fold in (("folded", True), ("separate", False)):
        path = tmp_path / f"{name}.py"
        path.write_text(GOOD)
        stages.clear()
        d.fold_traces = fold
        out[name] = d.evaluate_candidate(path, GOOD, smoke, fname=f"{name}.py")
        out[name + "_stages"] = list(stages)
    assert out["folded_stages"] == [("smoke", False, None), ("sweep", True, 2)]
    assert out["separate_stages"] == [("smoke", False, None), ("sweep", False, None),
                                      ("traces", True, None)]
    v1, r1, d1 = out["folded"]
    v2, r2, d2 = out["separate"]
    assert v1 == v2 and v1["kind"] == "ok"
    assert r1 == r2
    assert d1 == d2 and d1


def test_local_tasks_weigh_traced_draws():
    """With the first draws traced (a discovery sweep's digest draws), local tasks hold equal
    costs, a traced unit counting TRACED_UNIT_COST: the traced draws' task takes fewer units.
    With every unit traced, or none, the split is by numbers of units, as without."""
    from autotts.sandbox.evaluation import TRACED_UNIT_COST, _tasks

    betas, draws, stores, k = 11, 20, 4, 2
    units = [(s, r, d, d + 1) for r in range(betas) for d in range(draws) for s in range(stores)]
    plain = _tasks(units, stores, 2, one_store=False)
    tasks = _tasks(units, stores, 2, one_store=False, traced=lambda u: u[2] < k)
    assert sorted(i for t in tasks for i in t.index) == list(range(len(units)))
    cost = [sum(TRACED_UNIT_COST if units[i][2] < k else 1.0 for i in t.index) for t in tasks]
    assert all(units[i][2] < draws // 2 for i in tasks[0].index)  # the traced draws first
    assert len(tasks[0].index) < len(plain[0].index)
    assert abs(cost[0] - cost[1]) <= TRACED_UNIT_COST
    for every in (lambda u: True, lambda u: False):
        same = _tasks(units, stores, 2, one_store=False, traced=every)
        assert [t.index for t in same] == [t.index for t in plain]


def test_local_tasks_hold_every_beta_alike():
    """Workers split the grid by draws, not by β: β sets a candidate's width and depth, so a
    β-major split gave one worker the cheap half of the grid and the other the dear half. Every
    unit goes to exactly one task, and a batch's units stay together where no boundary cuts it."""
    from autotts.sandbox.evaluation import _tasks

    betas, draws, stores = 11, 20, 4
    units = [(s, r, d, d + 1) for r in range(betas) for d in range(draws) for s in range(stores)]
    tasks = _tasks(units, stores, 2, one_store=False)
    assert len(tasks) == 2
    assert sorted(i for t in tasks for i in t.index) == list(range(len(units)))
    for t in tasks:
        per_beta = [sum(1 for i in t.index if units[i][1] == r) for r in range(betas)]
        assert per_beta == [draws * stores // 2] * betas  # every β, half its draws
        assert [u[1:] for u in t.units] == [units[i][1:] for i in t.index]
    # Ray: one store per task, still split by draws within the store.
    ray = _tasks(units, stores, 4, one_store=True)
    for t in ray:
        assert len(t.stores) == 1
        assert {units[i][1] for i in t.index} == set(range(betas))
