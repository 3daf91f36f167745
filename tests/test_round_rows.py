"""A round's binary rows (autotts.sandbox.wire: [slot, op, a, b, events] as int64): every field
the child can forge is checked by the judge, which answers a malformed one with ProtocolError
(a crash verdict), never another exception and never a number; a well-formed row gives the very
reply (counters, reveals, refusal text) that the same action written as a JSON message gives."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from autotts.engine import InvalidAction
from autotts.sandbox.judge import OutputLimit, ProtocolError
from autotts.sandbox.wire import (
    OP_ADVANCE,
    OP_ADVANCE_MANY_IDX,
    OP_ADVANCE_MANY_MASK,
    OP_ANSWER,
    OP_BRANCH,
    OP_BRANCH_MANY,
    OP_EXTEND,
    OP_JSON,
    OP_PROBE,
    OP_PRUNE,
    OP_PRUNE_MANY_IDX,
    OP_PRUNE_MANY_MASK,
    OP_READ,
    OP_READ_NEW,
    OP_READ_NEW_MANY,
    REFUSED,
)
from tests.test_engine import episode, question, store  # noqa: F401 (fixtures)
from tests.test_sandbox import parent  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import _busy_task, json_round

NO_IDX, NO_MASK = np.zeros(0, np.int32), np.zeros(0, bool)


def _rows(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


def _send(task, rows, idx=NO_IDX, masks=NO_MASK, m=None, e=None):
    header = {"t": "round"}
    if m is not None:
        header["m"] = m
    if e is not None:
        header["e"] = e
    return task.on_frame(header, [_rows(*rows), idx, masks])


def _opened(k: int = 3):
    """A task whose slot 0 has k branches open (no probes)."""
    task = _busy_task()
    reply = _send(task, [[0, OP_BRANCH_MANY, k, 0, 0]])
    assert reply["x"] == [] and reply["arrays"][0][0, 4] >= 0  # served
    return task


# ---- malformed fields: ProtocolError, whatever the field ---------------------------------------

_MALFORMED = {
    "slot not live": ([[-1, OP_ADVANCE, 0, 0, 0]], {}),
    "slot past the batch": ([[2**40, OP_ADVANCE, 0, 0, 0]], {}),
    "slot most negative": ([[-(2**63), OP_ADVANCE, 0, 0, 0]], {}),
    "slot twice": ([[0, OP_ADVANCE, 0, 0, 0], [0, OP_ADVANCE, 1, 0, 0]], {}),
    "op unknown": ([[0, 15, 0, 0, 0]], {}),
    "op negative": ([[0, -1, 0, 0, 0]], {}),
    "op huge": ([[0, 2**62, 0, 0, 0]], {}),
    "events flag 2": ([[0, OP_ADVANCE, 0, 0, 2]], {"e": [[], []]}),
    "events flag -1": ([[0, OP_ADVANCE, 0, 0, -1]], {"e": [[]]}),
    "events missing": ([[0, OP_ADVANCE, 0, 0, 1]], {}),
    "events left over": ([[0, OP_ADVANCE, 0, 0, 0]], {"e": [[]]}),
    "events on a JSON row": ([[0, OP_JSON, 0, 0, 1]],
                             {"m": [[0, "advance", [0]]], "e": [[]]}),
    "scalar with b": ([[0, OP_ADVANCE, 0, 1, 0]], {}),
    "extend with b": ([[0, OP_EXTEND, 0, -1, 0]], {}),
    "probe with b": ([[0, OP_PROBE, 0, 2**40, 0]], {}),
    "read with b": ([[0, OP_READ, 0, 1, 0]], {}),
    "prune with b": ([[0, OP_PRUNE, 0, 1, 0]], {}),
    "read_new_many with b": ([[0, OP_READ_NEW_MANY, 1, 1, 0]], {}),
    "read_new with a": ([[0, OP_READ_NEW, 1, 0, 0]], {}),
    "read_new with b": ([[0, OP_READ_NEW, 0, 1, 0]], {}),
    "branch probe 2": ([[0, OP_BRANCH, 2, 0, 0]], {}),
    "branch probe -1": ([[0, OP_BRANCH, -1, 0, 0]], {}),
    "branch with b": ([[0, OP_BRANCH, 0, 1, 0]], {}),
    "branch_many probe 2": ([[0, OP_BRANCH_MANY, 1, 2, 0]], {}),
    "answer flag 2": ([[0, OP_ANSWER, 2, 0, 0]], {}),
    "answer flag -1": ([[0, OP_ANSWER, -1, 0, 0]], {}),
    "null answer with a class": ([[0, OP_ANSWER, 0, 1, 0]], {}),
    "answer past int32": ([[0, OP_ANSWER, 1, 2**31, 0]], {}),
    "answer below int32": ([[0, OP_ANSWER, 1, -(2**31) - 1, 0]], {}),
    "JSON row with a": ([[0, OP_JSON, 1, 0, 0]], {"m": [[0, "advance", [0]]]}),
    "JSON row with b": ([[0, OP_JSON, 0, 1, 0]], {"m": [[0, "advance", [0]]]}),
    "JSON row without its message": ([[0, OP_JSON, 0, 0, 0]], {}),
    "JSON message left over": ([[0, OP_ADVANCE, 0, 0, 0]], {"m": [[0, "advance", [0]]]}),
    "JSON message of another slot": ([[0, OP_JSON, 0, 0, 0]], {"m": [[1, "advance", [0]]]}),
    "JSON message with a string slot": ([[0, OP_JSON, 0, 0, 0]], {"m": [["0", "advance", [0]]]}),
    "JSON message not a list": ([[0, OP_JSON, 0, 0, 0]], {"m": [{"slot": 0}]}),
    "messages not a list": ([[0, OP_ADVANCE, 0, 0, 0]], {"m": {"0": 1}}),
    "events not a list": ([[0, OP_ADVANCE, 0, 0, 0]], {"e": "x"}),
    "indices past the round": ([[0, OP_ADVANCE_MANY_IDX, 4, 1, 0]],
                               {"idx": np.arange(3, dtype=np.int32)}),
    "indices negative count": ([[0, OP_ADVANCE_MANY_IDX, -1, 1, 0]],
                               {"idx": np.arange(3, dtype=np.int32)}),
    "indices huge count": ([[0, OP_ADVANCE_MANY_IDX, 2**62, 1, 0]],
                           {"idx": np.arange(3, dtype=np.int32)}),
    "mask past the round": ([[0, OP_ADVANCE_MANY_MASK, 4, 1, 0]], {"masks": np.ones(3, bool)}),
    "mask negative count": ([[0, OP_ADVANCE_MANY_MASK, -3, 1, 0]], {"masks": np.ones(3, bool)}),
    "mask read as indices": ([[0, OP_ADVANCE_MANY_IDX, 3, 1, 0]], {"masks": np.ones(3, bool)}),
    "indices read as a mask": ([[0, OP_ADVANCE_MANY_MASK, 3, 1, 0]],
                               {"idx": np.arange(3, dtype=np.int32)}),
    "two rows, one mask": ([[0, OP_ADVANCE_MANY_MASK, 3, 1, 0], [1, OP_PRUNE_MANY_MASK, 3, 0, 0]],
                           {"masks": np.ones(3, bool)}),
    "prune_many with b": ([[0, OP_PRUNE_MANY_MASK, 3, 1, 0]], {"masks": np.ones(3, bool)}),
    "prune_many indices with b": ([[0, OP_PRUNE_MANY_IDX, 3, 1, 0]],
                                  {"idx": np.arange(3, dtype=np.int32)}),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_a_malformed_row_is_a_protocol_error(case):
    rows, kw = _MALFORMED[case]
    task = _opened(3)
    _send(task, [[1, OP_BRANCH_MANY, 3, 0, 0]])  # slot 1 has three branches too
    idx, masks = kw.get("idx", NO_IDX), kw.get("masks", NO_MASK)
    with pytest.raises(ProtocolError):
        _send(task, rows, idx, masks, m=kw.get("m"), e=kw.get("e"))


@pytest.mark.parametrize("arrays", [
    [],
    [_rows([0, OP_READ_NEW, 0, 0, 0])],
    [_rows([0, OP_READ_NEW, 0, 0, 0]), NO_IDX],
    [_rows([0, OP_READ_NEW, 0, 0, 0]), NO_IDX, NO_MASK, NO_MASK],        # a fourth array
    [_rows([0, OP_READ_NEW, 0, 0, 0]).astype(np.int32), NO_IDX, NO_MASK],  # rows as int32
    [_rows([0, OP_READ_NEW, 0, 0, 0]).reshape(-1), NO_IDX, NO_MASK],    # 1-D
    [np.zeros((1, 4), np.int64), NO_IDX, NO_MASK],                      # four columns
    [np.zeros((1, 6), np.int64), NO_IDX, NO_MASK],                      # six
    [_rows([0, OP_READ_NEW, 0, 0, 0]), NO_IDX.astype(np.int64), NO_MASK],
    [_rows([0, OP_READ_NEW, 0, 0, 0]), NO_IDX, NO_MASK.view(np.uint8)],
    [_rows([0, OP_READ_NEW, 0, 0, 0]), NO_MASK, NO_IDX],                # swapped
    [_rows([0, OP_READ_NEW, 0, 0, 0]), NO_IDX.reshape(0, 1), NO_MASK],
])
def test_round_arrays_of_another_count_dtype_or_shape_are_a_protocol_error(arrays):
    task = _busy_task()
    with pytest.raises(ProtocolError):
        task.on_frame({"t": "round"}, arrays)


def test_trace_events_of_a_row_are_checked_and_counted():
    task = _busy_task()  # traced: its events are kept
    with pytest.raises(ProtocolError):
        _send(task, [[0, OP_READ_NEW, 0, 0, 1]], e=[[["kind", "not a dict"]]])
    task = _busy_task()
    task.budget.items = 10
    with pytest.raises(OutputLimit):
        _send(task, [[0, OP_READ_NEW, 0, 0, 1]], e=[[["kind", {"x": "y" * 100}]]])
    task = _busy_task()
    _send(task, [[0, OP_READ_NEW, 0, 0, 1]], e=[[["mine", {"v": 1}]]])
    _send(task, [[0, OP_ANSWER, 0, 0, 1]], e=[[["last", {"v": 2}]]])
    events = task.judge.traces[0][1]["events"]
    assert [e["ev"] for e in events] == ["mine", "read_new", "last"]  # before its action


# ---- well-formed rows: the JSON message's very reply ------------------------------------------

def _json_reply(task, msg, idx=NO_IDX, masks=NO_MASK):
    reply = json_round(task, {"t": "round", "m": [msg]}, [idx, masks])
    return reply["m"], [a.tolist() for a in reply["arrays"]]


def _row_reply(task, row, idx=NO_IDX, masks=NO_MASK):
    reply = _send(task, [row], idx, masks)
    refusals = iter(reply["x"])
    m = [[s, g, p, a, n] if n >= 0 else [s, next(refusals), g, p, a]
         for s, g, p, a, n in reply["arrays"][0].tolist()]
    assert next(refusals, None) is None
    return m, [a.tolist() for a in reply["arrays"][1:]]


_SAME = [  # (row, JSON message, raw indices, raw mask), each after three branches without probe
    ([0, OP_ADVANCE, 1, 0, 0], [0, "advance", [1]], None, None),
    ([0, OP_ADVANCE, 7, 0, 0], [0, "advance", [7]], None, None),            # refused
    ([0, OP_ADVANCE, -(2**63), 0, 0], [0, "advance", [-(2**63)]], None, None),
    ([0, OP_EXTEND, 2, 0, 0], [0, "extend", [2]], None, None),
    ([0, OP_PROBE, 0, 0, 0], [0, "probe", [0]], None, None),
    ([0, OP_PROBE, 2**63 - 1, 0, 0], [0, "probe", [2**63 - 1]], None, None),
    ([0, OP_READ, 1, 0, 0], [0, "read", [1]], None, None),
    ([0, OP_PRUNE, 1, 0, 0], [0, "prune", [1]], None, None),
    ([0, OP_PRUNE, 5, 0, 0], [0, "prune", [5]], None, None),
    ([0, OP_READ_NEW, 0, 0, 0], [0, "read_new", []], None, None),
    ([0, OP_READ_NEW_MANY, 2, 0, 0], [0, "read_new_many", [2]], None, None),
    ([0, OP_READ_NEW_MANY, -1, 0, 0], [0, "read_new_many", [-1]], None, None),
    ([0, OP_BRANCH, 1, 0, 0], [0, "branch", [True]], None, None),
    ([0, OP_BRANCH, 0, 0, 0], [0, "branch", [False]], None, None),
    ([0, OP_BRANCH_MANY, 2, 1, 0], [0, "branch_many", [2, True]], None, None),
    ([0, OP_BRANCH_MANY, 10**6, 0, 0], [0, "branch_many", [10**6, False]], None, None),
    ([0, OP_ADVANCE_MANY_IDX, 2, 1, 0], [0, "advance_many", [["#", 2], 1]], [0, 2], None),
    ([0, OP_ADVANCE_MANY_IDX, 2, 3, 0], [0, "advance_many", [["#", 2], 3]], [2, 1], None),
    ([0, OP_ADVANCE_MANY_IDX, 2, 0, 0], [0, "advance_many", [["#", 2], 0]], [0, 1], None),
    ([0, OP_ADVANCE_MANY_IDX, 2, -5, 0], [0, "advance_many", [["#", 2], -5]], [0, 1], None),
    ([0, OP_ADVANCE_MANY_IDX, 2, 2**62, 0], [0, "advance_many", [["#", 2], 2**62]], [0, 1],
     None),
    ([0, OP_ADVANCE_MANY_IDX, 2, 1, 0], [0, "advance_many", [["#", 2], 1]], [1, 1], None),
    ([0, OP_ADVANCE_MANY_IDX, 0, 1, 0], [0, "advance_many", [["#", 0], 1]], [], None),
    ([0, OP_ADVANCE_MANY_MASK, 3, 1, 0], [0, "advance_many", [["?", 3], 1]], None,
     [True, False, True]),
    ([0, OP_ADVANCE_MANY_MASK, 2, 1, 0], [0, "advance_many", [["?", 2], 1]], None,
     [True, True]),                                                          # refused: length
    ([0, OP_ADVANCE_MANY_MASK, 0, 1, 0], [0, "advance_many", [["?", 0], 1]], None, []),
    ([0, OP_PRUNE_MANY_IDX, 2, 0, 0], [0, "prune_many", [["#", 2]]], [0, 2], None),
    ([0, OP_PRUNE_MANY_MASK, 3, 0, 0], [0, "prune_many", [["?", 3]]], None,
     [False, True, True]),
]


@pytest.mark.parametrize("case", range(len(_SAME)))
def test_a_row_is_answered_as_its_json_message(case):
    row, msg, idx, mask = _SAME[case]
    idx = NO_IDX if idx is None else np.array(idx, np.int32)
    mask = NO_MASK if mask is None else np.array(mask, bool)
    a, b = _opened(3), _opened(3)
    _send(a, [[0, OP_ADVANCE, 0, 0, 0]])  # something revealed first
    json_round(b, {"t": "round", "m": [[0, "advance", [0]]]})
    got, want = _row_reply(a, row, idx, mask), _json_reply(b, msg, idx, mask)
    assert got == want
    assert a.judge.actions == b.judge.actions
    ea, eb = a.judge.live[0].ep, b.judge.live[0].ep
    assert (ea.tokens, ea.num_opened, ea.num_actions) == (eb.tokens, eb.num_opened, eb.num_actions)
    if type(got[0][0][1]) is str:
        assert got[0][0][4] == ea.num_actions  # a refusal's counters


def test_a_round_of_many_rows_takes_its_lists_in_row_order():
    """Indices and masks are consumed in row order, JSON messages interleaved with rows; the
    reply's rows follow the round's order and take the reveals n at a time."""
    task = _busy_task()
    _send(task, [[0, OP_BRANCH_MANY, 3, 0, 0], [1, OP_BRANCH_MANY, 3, 0, 0],
                 [2, OP_BRANCH_MANY, 3, 0, 0]])
    running = {s: task.judge.live[s].ep.running for s in (0, 1, 2)}
    first = {s: int(np.flatnonzero(r)[0]) for s, r in running.items()}
    reply = _send(task, [[1, OP_ADVANCE_MANY_MASK, 3, 1, 0], [0, OP_JSON, 0, 0, 0],
                         [2, OP_ADVANCE_MANY_IDX, 1, 1, 0]],
                  idx=np.array([first[0], first[2]], np.int32), masks=running[1],
                  m=[[0, "advance_many", [["#", 1], 1]]])
    rows = reply["arrays"][0].tolist()
    assert [r[0] for r in rows] == [1, 0, 2]
    assert [r[4] for r in rows] == [int(running[1].sum()), 1, 1]
    branches = reply["arrays"][1].tolist()
    assert branches == [*np.flatnonzero(running[1]).tolist(), first[0], first[2]]
    assert reply["x"] == []


def test_a_refusal_row_carries_its_message_in_order():
    task = _opened(3)
    _send(task, [[1, OP_BRANCH_MANY, 1, 0, 0]])
    reply = _send(task, [[0, OP_ADVANCE, 9, 0, 0], [1, OP_PRUNE, 4, 0, 0]])
    rows = reply["arrays"][0].tolist()
    assert [r[4] for r in rows] == [REFUSED, REFUSED]
    assert len(reply["x"]) == 2 and "9" in reply["x"][0] and "4" in reply["x"][1]


def test_answers_by_row_end_the_episode_as_by_json():
    a, b = _opened(2), _opened(2)
    _send(a, [[0, OP_ADVANCE, 0, 0, 0]])
    json_round(b, {"t": "round", "m": [[0, "advance", [0]]]})
    cls = int(a.judge.live[0].ep.latest[0])
    _send(a, [[0, OP_ANSWER, 1, cls, 0]])
    json_round(b, {"t": "round", "m": [[0, "answer", [cls]]]})
    assert 0 not in a.judge.live and 0 not in b.judge.live
    ra, rb = a.judge.result(0), b.judge.result(0)
    for x, y in ((ra.answers, rb.answers), (ra.tokens, rb.tokens), (ra.probes, rb.probes)):
        assert np.array_equal(x, y)


# ---- the client: what goes as a row, what as JSON, refused as in-process ------------------------

ODD = '''
import numpy as np


class Odd:
    NAME = "odd"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.branch_many(3, probe=True)
        mask = ep.running
        idx = np.flatnonzero(mask)
        tries = [
            lambda: ep.advance(2**64), lambda: ep.advance(2**63), lambda: ep.advance(2**63 - 1),
            lambda: ep.advance(-(2**63) - 1), lambda: ep.advance(-1), lambda: ep.probe(2**70),
            lambda: ep.extend(-(2**63)), lambda: ep.read(2**63), lambda: ep.prune(2**64),
            lambda: ep.read_new_many(2**64), lambda: ep.read_new_many(-1),
            lambda: ep.branch_many(2**63), lambda: ep.branch_many(2**63 - 1),
            lambda: ep.advance_many([0, 0]), lambda: ep.advance_many(np.array([0, 0])),
            lambda: ep.advance_many(mask, 1.5), lambda: ep.advance_many(mask, True),
            lambda: ep.advance_many(mask, 2**64), lambda: ep.advance_many(idx, -(2**63) - 1),
            lambda: ep.advance_many(idx, 0), lambda: ep.advance_many(mask[:1]),
            lambda: ep.advance_many(np.zeros(0, bool)), lambda: ep.advance_many([9]),
            lambda: ep.prune_many([7]), lambda: ep.prune_many(np.zeros(0, bool)),
            lambda: ep.advance_many(idx.astype(np.uint8), np.int64(2)),
            lambda: ep.advance_many(list(idx), 2**62),
            lambda: ep.advance_many(mask, 2),
            lambda: ep.prune_many(mask & (np.arange(len(mask)) == 0)),
            lambda: ep.read_new(), lambda: ep.branch(), lambda: ep.branch(probe=True),
        ]
        for k, f in enumerate(tries):
            try:
                out = f()
                ep.trace("ok", k=k, out=None if out is None else np.asarray(out).tolist())
            except Exception as e:
                ep.trace("refused", k=k, why=str(e)[:200])
        return int(ep.latest[0])
'''


@pytest.mark.usefixtures("parent")
def test_odd_arguments_are_refused_or_served_as_in_process(tmp_path):
    """Arguments past int64, non-int `times`, lists and arrays of every kind: each goes as a row
    or as JSON, and the candidate sees what it sees in-process (results, refusals, traces)."""
    from autotts.evaluate import EvalProtocol, evaluate
    from autotts.sandbox import evaluate_sandboxed
    from tests.test_sandbox import FAST
    from tests.test_sandbox_boundary import STORE

    path = tmp_path / "odd.py"
    path.write_text(ODD)
    proto = EvalProtocol(draws=2)
    a = evaluate(str(path), [STORE], [0.5], proto, episodes=True, traces=True,
                 on_error="record")
    b = evaluate_sandboxed(ODD, [STORE], [0.5], proto, episodes=True, traces=True,
                           on_error="record", limits=FAST, filename=str(path))
    assert a.rows == b.rows and a.episodes == b.episodes and a.errors == b.errors
    assert a.traces == b.traces
    kinds = [e["ev"] for t in a.traces for e in t["events"]]
    assert "refused" in kinds and "ok" in kinds


# ---- the engine's journal, taken without its arrays --------------------------------------------

def test_move_journal_gives_what_take_journal_gives(request):
    """Episode.move_journal (the judge's) hands over the same reveals as take_journal, action by
    action: scalar reveals (one branch at a time) and array ones (advance_many) alike."""
    q = request.getfixturevalue("question")  # test_engine's toy question
    a, b = episode(q, journal=True), episode(q, journal=True)
    steps = [("branch_many", (3,), {"probe": True}), ("extend", (0,), {}), ("probe", (0,), {}),
             ("advance_many", ([1, 0],), {"times": 3}), ("read_new_many", (1,), {}),
             ("advance", (0,), {}), ("read_new", (), {}), ("prune", (1,), {}),
             ("advance", (1,), {})]  # refused: pruned
    revealed = 0
    for name, args, kw in steps:
        for ep in (a, b):
            with contextlib.suppress(InvalidAction):
                getattr(ep, name)(*args, **kw)
        out: list = []
        n = b.move_journal(out)
        want = a.take_journal()
        got = [np.concatenate(col, dtype=dt) for col, dt in
               zip(zip(*out, strict=True), (np.int64, np.int64, np.int32, bool), strict=True)
               ] if out else [np.zeros(0)] * 4
        assert n == len(want[0])
        revealed += n
        for x, y in zip(got, want, strict=True):
            assert x.tolist() == y.tolist()
    assert revealed >= 8
