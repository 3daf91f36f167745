"""The replay semantics of DESIGN §3, action by action, on a hand-made question (Δ = 10)."""

from __future__ import annotations

import gc
import types

import numpy as np
import pytest

from autotts.engine import NO_ANSWER, NO_ANSWER_ID, Episode, InvalidAction, Question, store_class
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
    assert store_class(ep, ep.probe(0)) == cls(store, "x")
    assert (ep.tokens, ep.num_probes) == (10, 1)
    with pytest.raises(InvalidAction, match="twice"):
        ep.probe(0)


def test_advance_to_the_end_charges_the_remainder(store, question):
    ep = episode(question)
    ep.branch(probe=True)
    assert store_class(ep, ep.advance(0)) == cls(store, "A")
    assert store_class(ep, ep.advance(0)) == cls(store, "A")
    assert ep.tokens == 30 and not ep.is_finished(0)
    assert store_class(ep, ep.advance(0)) == cls(store, "A")  # the finishing step reveals the final
    assert ep.is_finished(0) and ep.tokens == 35 and ep.depth(0) == 4
    assert ep.num_probes == 3
    with pytest.raises(InvalidAction, match="finished"):
        ep.advance(0)
    with pytest.raises(InvalidAction, match="finished"):
        ep.probe(0)
    assert [store_class(ep, a) for a in ep.history(0)] == [cls(store, a) for a in ("x", "A", "A", "A")]
    assert ep.history(0).tolist() == [1, 2, 2, 2]  # ids in reveal order
    assert ep.history_depths(0).tolist() == [1, 2, 3, 4]


def test_read_new_costs_tokens_but_stepping_costs_intervals(question, store):
    ep = episode(question, order=(1, 0, 2, 3))
    assert store_class(ep, ep.read_new()) == cls(store, "B")
    assert ep.tokens == 5 and ep.is_finished(0)
    ep2 = episode(question, order=(1, 0, 2, 3))
    ep2.branch()
    assert store_class(ep2, ep2.extend(0)) == cls(store, "B")  # the finishing step: remainder max(0, 5 - 10) = 0
    assert ep2.tokens == 10


def test_branch_without_probes_finishes_at_once(question, store):
    ep = episode(question, order=(2, 0, 1, 3))
    ep.branch(probe=True)
    assert ep.is_finished(0) and ep.tokens == 7 and ep.num_probes == 0
    assert store_class(ep, ep.latest_answer(0)) == cls(store, "A")


def test_read_runs_an_open_branch_for_what_stepping_costs(question):
    ep = episode(question)
    ep.branch()
    ep.read(0)
    assert ep.tokens == 35 and ep.is_finished(0)
    assert ep.num_probes == 0 and ep.history_depths(0).tolist() == [4]


def test_probe_cost_and_budget(question):
    """DESIGN §3: admissible while the cost so far is below B, charged in full, then only ANSWER."""
    ep = episode(question, probe_cost=3, budget=25)
    ep.branch(probe=True)
    assert ep.tokens == 13 and ep.generated_tokens == 10
    ep.advance(0)  # 13 < 25: admitted, and charged in full
    assert (ep.tokens, ep.remaining_budget) == (26, -1)
    n = ep.num_actions
    for action in (lambda: ep.advance(0), ep.branch, ep.read_new, lambda: ep.prune(0),
                   lambda: ep.read_new_many(0), lambda: ep.advance_many([])):
        with pytest.raises(InvalidAction, match="budget is spent") as err:
            action()
        assert "26" in str(err.value) and "25" in str(err.value)  # revealed figures only
    assert (ep.tokens, ep.depth(0), ep.num_probes, ep.num_actions) == (26, 2, 2, n)


def test_budget_refusal_does_not_depend_on_the_hidden_cost(question):
    """The old rule ('refused if it would exceed B') told the controller T_b by the refusal."""
    outcomes = set()
    for order in ((0, 1, 2, 3), (1, 0, 2, 3), (2, 0, 1, 3), (3, 0, 1, 2)):
        ep = episode(question, order=order, budget=6)
        ep.read_new()  # costs 35, 5, 7 or 20: admitted alike at cost 0
        try:
            ep.read_new()
            outcomes.add("admitted")
        except InvalidAction as e:
            outcomes.add(str(e).replace(str(ep.tokens), "<cost so far>"))
    assert outcomes == {"admitted", "the budget is spent (<cost so far> tokens so far, budget 6): "
                        "only ANSWER remains"}


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
    for _ in range(3):  # round by round, as advance_many reveals (and numbers) them
        for i in range(4):
            if not b.is_finished(i):
                b.advance(i)
    assert a.tokens == b.tokens and a.num_probes == b.num_probes
    assert a.depths.tolist() == b.depths.tolist()
    assert a.latest.tolist() == b.latest.tolist()
    assert a.finished.tolist() == b.finished.tolist()
    assert [a.history(i).tolist() for i in range(4)] == [b.history(i).tolist() for i in range(4)]


def test_a_batch_action_is_one_action_under_a_budget(question):
    ep = episode(question, budget=25)
    ep.branch_many(2, probe=True)  # 10 + 10
    ep.advance_many([0, 1], times=3)  # 20 < 25: admitted whole, 20 + (10 + 10 + 5) + 0 = 45
    assert ep.tokens == 45 and ep.finished.tolist() == [True, True]
    with pytest.raises(InvalidAction, match="budget"):
        ep.branch()
    assert ep.tokens == 45 and ep.depths.tolist() == [4, 2] and ep.num_opened == 2


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


def test_ids_are_numbered_in_reveal_order_and_map_back(store, question):
    ep = episode(question, order=(3, 1, 0, 2))
    assert ep.no_answer_class == NO_ANSWER_ID == 0  # known before anything is revealed
    assert ep.read_new() == 1  # C: the first class this episode reveals gets 1
    assert ep.read_new() == 2  # B
    assert ep.read_new() == 3  # A
    assert ep.read_new() == 3  # A again
    assert [store_class(ep, a) for a in (1, 2, 3)] == [cls(store, t) for t in ("C", "B", "A")]
    for not_revealed in (0, 4, -1, 2**40, -(2**40), None, True, 1.0, "1", np.int64(9)):
        assert store_class(ep, not_revealed) == NO_ANSWER
    assert store_class(ep, np.int32(2)) == cls(store, "B")


def test_the_no_answer_class_is_id_0_once_revealed():
    store = make_store([("7", [branch(["ERR", "7"], 25, "ERR"), branch(["3"], 12, "7")])])
    q = Question(store.replay(), 0)
    ep = Episode(q, np.array([1, 0]))
    assert ep.read_new() == 1 and ep.no_answer_class == 0
    assert store_class(ep, 0) == NO_ANSWER  # not revealed yet: scores as no answer
    ep.branch(probe=True)
    assert ep.latest_answer(1) == 0  # 'ERR' takes its reserved id
    assert store_class(ep, 0) == q.no_answer_class >= 0
    assert ep.advance(1) == 1 and ep.advance(1) == 0


@pytest.mark.parametrize("first", ["ERR", "", "  "])
def test_err_and_empty_are_both_the_no_answer_id(first, tmp_path):
    """An exact store gives 'ERR' and the empty answer two classes (string identity), but both
    are the model's own "no answer" output: id 0 in the episode, whichever is revealed first,
    from the store as parsed from JSON, as its tables and as written to disk and read back."""
    from autotts.store import open_store, write_store

    other = "" if first.strip() == "ERR" else "ERR"

    def make():
        return make_store([("7", [branch([first, "7"], 25, other), branch(["3"], 12, other),
                                  branch(["3", first], 30, "3")])])

    tables = make()
    tables.branches  # noqa: B018  (builds its tables: replay reads them from now on)
    write_store(tables, tmp_path / "s")
    for st in (make(), tables, open_store(tmp_path / "s")):
        data, gold = st.replay(), st.gold_classes()
        q = Question(data, 0)
        ep = Episode(q, np.array([0, 1, 2]))
        assert ep.branch(probe=True) == 0 and ep.latest_answer(0) == 0  # first
        assert ep.read_new() == 0  # other: the same id, not a new one
        assert ep.advance(0) == 1  # '7'
        assert ep.read(0) == 0  # other again
        assert ep.read_new() == 2  # '3'
        assert ep.final_answers.tolist() == [0, 0, 2]
        assert store_class(ep, 0) == q.no_answer_class == cls(st, first.strip())
        assert gold.tolist() == [cls(st, "7")]


def test_journal_records_every_reveal_in_order(question):
    ep = episode(question, order=(0, 1, 2, 3), journal=True)
    ep.branch_many(3, probe=True)  # probes at depth 1 of branches 0, 1; branch 2 (L=0) finishes
    ep.extend(0)  # reveals nothing
    ep.probe(0)
    ep.advance_many([1, 0], times=3)
    ep.read_new_many(1)
    i, d, a, f = ep.take_journal()
    assert i.tolist() == [0, 1, 2, 0, 1, 0, 0, 3]
    assert d.tolist() == [1, 1, 1, 2, 2, 3, 4, 3]
    assert f.tolist() == [False, False, True, False, True, False, True, True]
    hist = {k: ep.history(k).tolist() for k in range(4)}
    for k in range(4):
        assert a[i == k].tolist() == hist[k]
        assert d[i == k].tolist() == ep.history_depths(k).tolist()
    assert [len(x) for x in ep.take_journal()] == [0, 0, 0, 0]  # taken: cleared
    with pytest.raises(RuntimeError, match="journal"):
        episode(question).take_journal()


@pytest.mark.parametrize("times", [1.0, 2.0, True, np.array([1, 2]), "2", None, 0, -3])
def test_wrong_times_is_an_invalid_action_naming_the_argument(question, times):
    for budget in (None, 15):  # the refusal does not depend on the budget either
        ep = episode(question, budget=budget)
        ep.branch_many(2, probe=True)
        with pytest.raises(InvalidAction, match=r"advance_many: times must be"):
            ep.advance_many(ep.running, times=times)
        assert (ep.num_actions, ep.tokens, ep.depths.tolist()) == (1, 20, [1, 1])


def test_argument_types_are_checked_and_named(question):
    ep = episode(question)
    ep.branch_many(2)
    cases = [
        (lambda: ep.advance(1.0), "advance: i must be an integer, got 1.0"),
        (lambda: ep.extend(True), "extend: i must be an integer, got True"),
        (lambda: ep.branch_many(2.0), "branch_many: k must be an integer, got 2.0"),
        (lambda: ep.read_new_many(-1), "read_new_many: k must be >= 0, got -1"),
        (lambda: ep.branch(probe=1), "branch: probe must be True or False, got 1"),
        (lambda: ep.advance_many([0.0]), "advance_many: which must be branch indices or a mask"),
        (lambda: ep.prune_many([True]), "prune_many: which must be a mask with one entry per opened branch (2)"),
        (lambda: ep.advance(object()), "advance: i must be an integer, got an object of type object"),
    ]
    for action, message in cases:
        with pytest.raises(InvalidAction) as e:
            action()
        assert str(e.value).startswith(message)
    assert ep.num_actions == 1 and ep.tokens == 20  # refusals are not counted
    assert ep.advance(np.int64(1)) == ep.latest_answer(1) and ep.advance_many(np.array(0)).size == 1


def test_read_new_many_of_zero_is_traced_at_the_end_of_the_pool(question):
    for trace in (False, True):
        ep = episode(question, trace=trace)
        ep.read_new_many(4)
        assert ep.read_new_many(0).tolist() == [] and ep.num_actions == 2
        assert ep.branch_many(0).tolist() == [] and ep.num_actions == 3
    assert [e.get("ans") for e in ep.trace_events()][-2:] == [None, None]


def test_client_reads_branch_lists_with_the_public_engine_functions():
    """The sandbox client refuses a branch list with the engine's public functions over its
    own mirror (branch_indices, running_indices), not with Episode's private methods borrowed
    as class attributes (which tied the mirror's attribute names to the engine's)."""
    import inspect

    from autotts import engine
    from autotts.sandbox.client import ClientEpisode

    for name, v in vars(ClientEpisode).items():
        assert getattr(v, "__qualname__", "").split(".")[0] != "Episode", name
    src = inspect.getsource(ClientEpisode)
    assert "branch_indices(" in src and "running_indices(" in src
    opened, running, pruned = 3, np.array([True, False, False, True]), np.array([False, True,
                                                                                 False, False])
    assert engine.running_indices([0], "w", opened, running, pruned).tolist() == [0]
    for which, words in (([1], "branch 1 is pruned"), ([2], "branch 2 is finished"),
                         ([3], "w names a branch that is not open (3 opened)"),
                         ([0, 0], "w names a branch twice"),
                         (np.ones(2, bool), "w must be a mask with one entry per opened branch (3)"),
                         (True, "w must be branch indices or a mask, got True")):
        with pytest.raises(InvalidAction) as e:
            engine.running_indices(which, "w", opened, running, pruned)
        assert str(e.value) == words


def test_single_branch_refusals_are_the_engines_public_checks():
    """Episode and the sandbox client (for a handle kept past its episode) refuse a branch
    index with the same public engine functions: the client restates no refusal words of its
    own, and the functions give Episode's words."""
    import inspect

    from autotts import engine
    from autotts.sandbox.client import ClientEpisode

    src = inspect.getsource(ClientEpisode)
    for words in ("is not open", "already pruned", "twice at depth", "'pruned' if",
                  "is finished", "is pruned"):
        assert words not in src, words
    for name in ("running_index(", "unpruned_index(", "opened_index(", "probed_twice(",
                 "unpruned_indices("):
        assert name in src, name
    opened, running, pruned = 3, np.array([True, False, False, True]), np.array([False, True,
                                                                                 False, False])
    assert engine.running_index(np.int32(0), "w", opened, running, pruned) == 0
    assert engine.unpruned_index(2, "w", opened, pruned) == 2
    assert engine.opened_index(1, "w", opened) == 1
    assert engine.unpruned_indices([0, 2], "w", opened, pruned).tolist() == [0, 2]
    for call, words in (
        (lambda: engine.running_index(1, "w", opened, running, pruned), "branch 1 is pruned"),
        (lambda: engine.running_index(2, "w", opened, running, pruned), "branch 2 is finished"),
        (lambda: engine.running_index(3, "w", opened, running, pruned),
         "branch 3 is not open (3 opened)"),
        (lambda: engine.running_index(1.0, "w", opened, running, pruned),
         "w must be an integer, got 1.0"),
        (lambda: engine.opened_index(-1, "w", opened), "branch -1 is not open (3 opened)"),
        (lambda: engine.unpruned_index(1, "w", opened, pruned),
         "PRUNE of branch 1, which is already pruned"),
        (lambda: engine.unpruned_index(True, "w", opened, pruned), "w must be an integer, got True"),
        (lambda: engine.unpruned_indices([0, 1], "w", opened, pruned),
         "PRUNE of already pruned branch 1"),
    ):
        with pytest.raises(InvalidAction) as e:
            call()
        assert str(e.value) == words
    assert str(engine.probed_twice(4, 2)) == "PROBE of branch 4 twice at depth 2"
