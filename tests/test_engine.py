"""The replay semantics of DESIGN §3, action by action, on a hand-made question (Δ = 10)."""

from __future__ import annotations

import gc
import types

import numpy as np
import pytest

from autotts.engine import NO_ANSWER, Episode, InvalidAction, Question
from tests.conftest import branch, make_store

GOLD = "GOLD-SENTINEL-only-in-gold"


@pytest.fixture(scope="module")
def store():
    return make_store(
        [
            (
                GOLD,
                [
                    branch(["x", "A", "A"], 35, "A"),  # L=3: 10+10+10, then remainder 5
                    branch(["B"], 5, "B"),  # L=1, T < L·Δ: stepping costs 10, reading 5
                    branch([], 7, "A"),  # L=0: the first step finishes it for 7
                    branch(["C", "C"], 20, "C"),  # L=2, remainder 0
                ],
            )
        ]
    )


@pytest.fixture
def question(store):
    return Question(store.replay(), 0)


def cls(store, text):
    reps = store.answers.to_pydict()
    return reps["answer_class"][reps["answer"].index(text)]


def episode(question, order=(0, 1, 2, 3), **kw):
    return Episode(question, np.array(order), **kw)


def test_branch_then_probe_reveals_first_interval(store, question):
    ep = episode(question)
    assert ep.branch() == 0
    assert (ep.depth(0), ep.tokens, ep.latest_answer(0)) == (1, 10, NO_ANSWER)
    assert ep.probe(0) == cls(store, "x")
    assert (ep.tokens, ep.num_probes) == (10, 1)
    with pytest.raises(InvalidAction, match="twice"):
        ep.probe(0)


def test_advance_to_the_end_charges_the_remainder(store, question):
    ep = episode(question)
    ep.branch(probe=True)
    assert ep.advance(0) == cls(store, "A")
    assert ep.advance(0) == cls(store, "A")
    assert ep.tokens == 30 and not ep.is_finished(0)
    assert ep.advance(0) == cls(store, "A")  # the finishing step reveals the final
    assert ep.is_finished(0) and ep.tokens == 35 and ep.depth(0) == 4
    assert ep.num_probes == 3
    with pytest.raises(InvalidAction, match="finished"):
        ep.advance(0)
    with pytest.raises(InvalidAction, match="finished"):
        ep.probe(0)
    assert ep.history(0).tolist() == [cls(store, a) for a in ("x", "A", "A", "A")]
    assert ep.history_depths(0).tolist() == [1, 2, 3, 4]


def test_read_new_costs_tokens_but_stepping_costs_intervals(question, store):
    ep = episode(question, order=(1, 0, 2, 3))
    assert ep.read_new() == cls(store, "B")
    assert ep.tokens == 5 and ep.is_finished(0)
    ep2 = episode(question, order=(1, 0, 2, 3))
    ep2.branch()
    assert ep2.extend(0) == cls(store, "B")  # the finishing step: remainder max(0, 5 - 10) = 0
    assert ep2.tokens == 10


def test_branch_without_probes_finishes_at_once(question, store):
    ep = episode(question, order=(2, 0, 1, 3))
    ep.branch(probe=True)
    assert ep.is_finished(0) and ep.tokens == 7 and ep.num_probes == 0
    assert ep.latest_answer(0) == cls(store, "A")


def test_read_runs_an_open_branch_for_what_stepping_costs(question):
    ep = episode(question)
    ep.branch()
    ep.read(0)
    assert ep.tokens == 35 and ep.is_finished(0)
    assert ep.num_probes == 0 and ep.history_depths(0).tolist() == [4]


def test_probe_cost_and_budget(question):
    ep = episode(question, probe_cost=3, budget=25)
    ep.branch(probe=True)
    assert ep.tokens == 13 and ep.generated_tokens == 10
    with pytest.raises(InvalidAction, match="budget"):
        ep.advance(0)  # 10 + 10 + 3·2 = 26 > 25
    assert (ep.tokens, ep.depth(0), ep.num_probes) == (13, 1, 1)  # nothing changed
    ep.extend(0)
    assert ep.tokens == 23 and ep.remaining_budget == 2


def test_prune_keeps_depth_and_history(question, store):
    ep = episode(question)
    ep.branch(probe=True)
    ep.advance(0)
    ep.prune(0)
    assert ep.is_pruned(0) and ep.depth(0) == 2 and len(ep.history(0)) == 2
    for action in (ep.advance, ep.extend, ep.probe, ep.read, ep.prune):
        with pytest.raises(InvalidAction):
            action(0)
    assert not ep.running[0]


def test_pool_and_index_errors(question):
    ep = episode(question)
    with pytest.raises(InvalidAction, match="not open"):
        ep.advance(0)
    ep.branch_many(4)
    with pytest.raises(InvalidAction, match="past the pool"):
        ep.branch()
    with pytest.raises(InvalidAction, match="past the pool"):
        ep.read_new()
    with pytest.raises(InvalidAction, match="integer"):
        ep.advance("0")  # type: ignore[arg-type]
    with pytest.raises(InvalidAction, match="twice"):
        ep.advance_many([0, 0])


def test_advance_many_matches_advancing_one_by_one(question):
    a = episode(question)
    b = episode(question)
    a.branch_many(4, probe=True)
    for _ in range(4):
        b.branch(probe=True)
    assert a.tokens == b.tokens and a.num_probes == b.num_probes
    a.advance_many(a.running, times=3)
    for i in range(4):
        for _ in range(3):
            if not b.is_finished(i):
                b.advance(i)
    assert a.tokens == b.tokens and a.num_probes == b.num_probes
    assert a.depths.tolist() == b.depths.tolist()
    assert a.latest.tolist() == b.latest.tolist()
    assert a.finished.tolist() == b.finished.tolist()
    assert [a.history(i).tolist() for i in range(4)] == [b.history(i).tolist() for i in range(4)]


def test_advance_many_is_all_or_nothing_under_a_budget(question):
    ep = episode(question, budget=40)
    ep.branch_many(2, probe=True)  # 10 + 10
    with pytest.raises(InvalidAction, match="budget"):
        ep.advance_many([0, 1], times=3)  # 20 + (10 + 10 + 5) + 0 = 45 > 40
    assert ep.tokens == 20 and ep.depths.tolist() == [1, 1]
    ep.advance_many([0, 1], times=1)  # branch 1 finishes: remainder max(0, 5 - 10) = 0
    assert ep.tokens == 30 and ep.finished.tolist() == [False, True]


def test_read_new_many_equals_read_new(question):
    a, b = episode(question), episode(question)
    finals = a.read_new_many(4)
    assert finals.tolist() == [b.read_new() for _ in range(4)]
    assert a.tokens == b.tokens == 35 + 5 + 7 + 20


def test_public_views_are_copies(question):
    ep = episode(question)
    ep.branch_many(2, probe=True)
    for name in ("depths", "finished", "pruned", "latest", "running", "final_answers"):
        before = getattr(ep, name).tolist()
        view = getattr(ep, name)
        view[...] = ~view if view.dtype == bool else view + 7  # every entry changes
        assert view.base is None or not np.shares_memory(view, ep._depth)
        assert getattr(ep, name).tolist() == before, name
    assert ep.depths.tolist() == [1, 1]
    h = ep.history(0)
    h[...] = 99
    assert ep.history(0).tolist() != [99]


def _reachable(root):
    """Everything reachable from `root` through object references, except modules, classes,
    functions and code (they lead to every module's globals, not to data the handle holds)."""
    skip = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    seen, stack, out = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        out.append(obj)
        stack.extend(gc.get_referents(obj))
        if isinstance(obj, np.ndarray) and obj.base is not None:
            stack.append(obj.base)
    return out


def test_no_gold_is_reachable_from_a_handle(store):
    question = Question(store.replay(), 0)
    gold_array = store.gold_classes()
    ep = Episode(question, np.arange(4), trace=True)
    ep.branch_many(4, probe=True)
    ep.advance_many(ep.running)
    objs = _reachable(ep)
    assert any(isinstance(o, np.ndarray) for o in objs)  # the walk does reach the engine's data
    for o in objs:
        assert o is not store and o is not gold_array and o is not store.questions
        if isinstance(o, str):
            assert GOLD not in o
        if isinstance(o, np.ndarray):
            assert not np.shares_memory(o, gold_array)


def test_unrevealed_data_only_behind_private_names(question):
    ep = episode(question)
    ep.branch()
    secret = (question._reveal, question._step_cost, question._cum, question._tokens)
    for name in dir(ep):
        if name.startswith("_"):
            continue
        value = getattr(ep, name)
        if isinstance(value, types.MethodType):
            assert value.__self__ is ep
            continue
        assert not isinstance(value, Question)
        if isinstance(value, np.ndarray):
            assert not any(np.shares_memory(value, s) for s in secret)


def test_handles_cannot_be_copied_or_pickled(question):
    import copy
    import pickle

    ep = episode(question)
    for obj in (ep, question):
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_a_closed_episode_cannot_act_or_read_on(question):
    ep = episode(question)
    ep.branch(probe=True)
    ep.close()
    for action in (lambda: ep.advance(0), ep.read_new, lambda: ep.history(0), ep.branch):
        with pytest.raises(InvalidAction, match="ended"):
            action()
    assert ep.tokens == 10 and ep.delta == 10 and ep.num_opened == 1
