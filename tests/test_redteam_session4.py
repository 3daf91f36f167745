"""Red team, session 4: raw masks on the wire, traced draws inside the scored sweep, and the
unit frame's trace flag. Each attempt is a test that asserts the sandbox holds: a typed
refusal, a typed failure, or identical numbers."""

from __future__ import annotations

import numpy as np
import pytest

from autotts.sandbox import evaluate_sandboxed
from autotts.sandbox.judge import ProtocolError
from tests.test_sandbox import FAST, parent  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import PROTO, STORE, _busy_task, _controller, json_round

# ---- forged mask frames, straight into the trusted side -------------------------------------


def _opened(task, slot: int, k: int) -> None:
    """Open k branches of `slot` with a valid round."""
    reply = json_round(task, {"t": "round", "m": [[slot, "branch_many", [k, False]]]}, [])
    assert reply["t"] == "reply"


def _running(task, slot: int) -> np.ndarray:
    """The judge's own running mask of a slot (the test reads the trusted side)."""
    return task.judge.live[slot].ep.running.copy()


def _round(task, msg, arrays):
    """A round of one message, written as JSON (its row says only where it goes)."""
    return json_round(task, {"t": "round", "m": [msg]}, arrays)


def test_a_mask_of_the_right_length_is_applied_as_a_mask():
    task = _busy_task()
    _opened(task, 0, 3)
    mask = _running(task, 0)
    reply = _round(task, [0, "advance_many", [["?", 3], 1]], [np.zeros(0, np.int32), mask])
    assert len(reply["m"][0]) == 5 and type(reply["m"][0][1]) is int  # served
    assert reply["m"][0][4] == mask.sum()


@pytest.mark.parametrize("n", [2, 4])
def test_a_mask_of_the_wrong_length_is_the_engines_refusal(n):
    task = _busy_task()
    _opened(task, 0, 3)
    reply = _round(task, [0, "advance_many", [["?", n], 1]],
                   [np.zeros(0, np.int32), np.ones(n, bool)])
    r = reply["m"][0]
    assert type(r[1]) is str and "one entry per opened branch" in r[1]


@pytest.mark.parametrize("marker", [["?", -1], ["?", 4], ["?", 2**63], ["?", 1.0], ["?", True],
                                    ["?", "1"], ["?", None]])
def test_a_mask_marker_past_or_outside_the_round_is_a_protocol_error(marker):
    task = _busy_task()
    _opened(task, 0, 3)
    with pytest.raises(ProtocolError):
        _round(task, [0, "advance_many", [marker, 1]], [np.zeros(0, np.int32), np.ones(3, bool)])


def test_a_marker_of_another_shape_is_a_plain_list_the_engine_refuses():
    task = _busy_task()
    _opened(task, 0, 3)
    reply = _round(task, [0, "advance_many", [["?", 1, 2], 1]],
                   [np.zeros(0, np.int32), np.ones(3, bool)])
    assert type(reply["m"][0][1]) is str  # a refusal, nothing read from the masks


def test_two_markers_cannot_take_the_same_mask_twice():
    task = _busy_task()
    _opened(task, 0, 3)
    _opened(task, 1, 3)
    msgs = [[0, "advance_many", [["?", 3], 1]], [1, "prune_many", [["?", 3]]]]
    with pytest.raises(ProtocolError):
        json_round(task, {"t": "round", "m": msgs}, [np.zeros(0, np.int32), np.ones(3, bool)])


def test_a_mask_marker_where_no_branch_list_goes_is_refused():
    """["?", n] is read only as advance_many's / prune_many's branch list: elsewhere it is a
    plain JSON value (a scalar check or the engine's refusal), never mask entries."""
    for msg in ([0, "advance", [["?", 1]]], [0, "prune", [["?", 1]]],
                [0, "branch_many", [["?", 1], False]], [0, "read_new_many", [["?", 1]]],
                [0, "answer", [["?", 1]]]):
        task = _busy_task()
        _opened(task, 0, 3)
        with pytest.raises(ProtocolError):
            _round(task, msg, [np.zeros(0, np.int32), np.ones(3, bool)])
    # advance_many's `times` is a number, not a marker
    task = _busy_task()
    _opened(task, 0, 3)
    with pytest.raises(ProtocolError):
        _round(task, [0, "advance_many", [["?", 3], ["?", 0]]],
               [np.zeros(0, np.int32), np.ones(3, bool)])


def test_an_index_marker_cannot_read_the_masks_or_the_reverse():
    task = _busy_task()
    _opened(task, 0, 3)
    with pytest.raises(ProtocolError):  # no indices in the round: "#" finds none
        _round(task, [0, "advance_many", [["#", 3], 1]], [np.zeros(0, np.int32), np.ones(3, bool)])
    task = _busy_task()
    _opened(task, 0, 3)
    with pytest.raises(ProtocolError):  # no masks in the round: "?" finds none
        _round(task, [0, "advance_many", [["?", 3], 1]], [np.arange(3, dtype=np.int32)])


@pytest.mark.parametrize("arrays", [
    [np.zeros(0, np.int32), np.ones(3, np.uint8)],        # a mask that is not bool
    [np.zeros(0, np.int32), np.ones(3, np.int32)],
    [np.zeros(0, np.int32), np.ones((1, 3), bool)],       # 2-D
    [np.ones(3, bool), np.zeros(0, np.int32)],            # swapped
    [np.zeros(0, np.int32), np.ones(3, bool), np.ones(3, bool)],  # a third array
    [np.zeros(0, np.int64), np.ones(3, bool)],
])
def test_mask_arrays_of_another_dtype_or_shape_are_a_protocol_error(arrays):
    task = _busy_task()
    _opened(task, 0, 3)
    with pytest.raises(ProtocolError):
        _round(task, [0, "advance_many", [["?", 3], 1]], arrays)


def test_non_canonical_bool_bytes_act_as_true_and_charge_what_they_reveal():
    """|b1 bytes other than 0/1 (here 0xFF, 0x02) come straight from np.frombuffer: the engine
    reads them as True (nonzero), reveals those branches and charges exactly them."""
    a, b = _busy_task(), _busy_task()
    _opened(a, 0, 3)
    _opened(b, 0, 3)
    mask = _running(a, 0)
    assert np.array_equal(mask, _running(b, 0))
    raw = np.frombuffer(bytes(np.where(mask, [0xFF, 0x02, 0x80], 0).astype(np.uint8)), bool)
    ra = _round(a, [0, "advance_many", [["?", 3], 1]], [np.zeros(0, np.int32), raw])
    rb = _round(b, [0, "advance_many", [["?", 3], 1]], [np.zeros(0, np.int32), mask])
    assert ra["m"] == rb["m"]
    for x, y in zip(ra["arrays"], rb["arrays"], strict=True):
        assert np.array_equal(x, y)


def test_a_mask_for_another_slot_only_spends_the_forgers_own_round():
    """Masks are consumed in message order: a slot whose marker takes another slot's entries
    only reorders what the child itself sent; each mask is checked against its own episode."""
    task = _busy_task()
    _opened(task, 0, 3)
    _opened(task, 1, 3)
    m0, m1 = _running(task, 0), _running(task, 1)
    msgs = [[1, "advance_many", [["?", 3], 1]], [0, "advance_many", [["?", 3], 1]]]
    reply = json_round(task, {"t": "round", "m": msgs},
                          [np.zeros(0, np.int32), np.concatenate([m1, m0])])
    assert [r[4] for r in reply["m"]] == [m1.sum(), m0.sum()]


def test_hostile_mask_frames_never_escape_untyped():
    """Random rounds built of mask markers and mask arrays: answered, or a typed failure."""
    import random

    from tests.test_sandbox_boundary import ALLOWED

    rng = random.Random(99)
    answered = failed = 0
    for _ in range(1500):
        task = _busy_task()
        _opened(task, 0, rng.randint(1, 4))
        n = rng.choice([-3, -1, 0, 1, 2, 3, 4, 5, 2**40])
        k = rng.randint(0, 6)
        dt = rng.choice([bool, bool, bool, np.uint8, np.int32, np.int64])
        mask = np.frombuffer(bytes(rng.randrange(256) for _ in range(k)), np.uint8).astype(dt) \
            if dt is not bool else np.frombuffer(bytes(rng.randrange(3) for _ in range(k)), bool)
        op = rng.choice(["advance_many", "prune_many", "advance", "branch_many"])
        args = [["?", n], rng.choice([1, 2, 0, -1, True, 1.5])] if op in (
            "advance_many", "branch_many") else [["?", n]]
        arrays = rng.choice([[np.zeros(0, np.int32), mask], [mask], [mask, mask], []])
        try:
            _round(task, [0, op, args], arrays)
            answered += 1
        except ALLOWED:
            failed += 1
    assert answered > 50 and failed > 50


# ---- code execution in the child: telling traced draws from untraced ones --------------------

_TELL = _controller('''
        # With code execution: anything in this process that says whether this draw is traced.
        traced = getattr(ep, "_events", None) is not None
        for o in gc.get_objects():
            if type(o).__name__ == "Scheduler":
                traced = traced or bool(o.tracing)
        if not traced:
            return None  # behave differently where nobody is looking
        i = ep.branch()
        while not ep.is_finished(i):
            ep.advance(i)
        return ep.latest_answer(i)
''')


@pytest.mark.usefixtures("parent")
def test_traced_and_untraced_draws_look_the_same_to_the_child():
    """Within one evaluation with traces, the draws past `trace_draws` must be indistinguishable
    from the traced ones: a candidate that answers only when it finds itself traced scores the
    same whichever draws are traced."""
    all_traced = evaluate_sandboxed(_TELL, [STORE], [0.5], PROTO, filename="hostile.py",
                                    _unrestricted=True, limits=FAST, traces=True, episodes=True)
    first = evaluate_sandboxed(_TELL, [STORE], [0.5], PROTO, filename="hostile.py",
                               _unrestricted=True, limits=FAST, traces=True, trace_draws=1,
                               episodes=True)
    assert first.rows == all_traced.rows
    assert first.episodes == all_traced.episodes
    # the digest still gets exactly the first draw's traces
    assert {t["draw"] for t in first.traces} == {0}


_UNIT_FLAG = _controller('''
        # With code execution: the unit frame the batch process read, if it is still around.
        for o in gc.get_objects():
            if type(o) is dict and o.get("t") == "unit" and "trace" in o:
                return None
        i = ep.branch()
        while not ep.is_finished(i):
            ep.advance(i)
        return ep.latest_answer(i)
''')


@pytest.mark.usefixtures("parent")
def test_the_unit_frame_says_nothing_about_tracing():
    ev = evaluate_sandboxed(_UNIT_FLAG, [STORE], [0.5], PROTO, filename="hostile.py",
                            _unrestricted=True, limits=FAST, traces=True, trace_draws=1)
    ref = evaluate_sandboxed(_UNIT_FLAG, [STORE], [0.5], PROTO, filename="hostile.py",
                             _unrestricted=True, limits=FAST, traces=True)
    assert ev.rows == ref.rows
    assert ev.rows[0]["accuracy"] > 0


# ---- restricted code: a dict subclass in trace data runs when the event is serialized --------

_SPY = '''
SEEN = []


class Spy(dict):
    def items(self):
        SEEN.append(1)
        return dict.items(self)


class Tell:
    NAME = "tell"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.trace("x", v=Spy(a=1))
        i = ep.branch()  # the event crosses the wire with this action
        if not SEEN:
            return None
        while not ep.is_finished(i):
            ep.advance(i)
        return ep.latest_answer(i)
'''


@pytest.mark.usefixtures("parent")
def test_a_serialization_spy_cannot_tell_traced_draws():
    """Plain (restricted) code: a dict subclass whose items() runs when the child serializes
    a trace event. It runs in every batch of a traced evaluation, so it tells nothing."""
    ref = evaluate_sandboxed(_SPY, [STORE], [0.5], PROTO, filename="spy.py", limits=FAST,
                             traces=True, on_error="record")
    ev = evaluate_sandboxed(_SPY, [STORE], [0.5], PROTO, filename="spy.py", limits=FAST,
                            traces=True, trace_draws=1, on_error="record")
    assert ev.rows == ref.rows
    assert ref.rows[0]["accuracy"] > 0 and not ref.errors  # the spy ran and was admitted


# ---- code execution: the batch's place in the order (its pid, its start time) ----------------


def _task_order(trace_draws):
    from autotts.sandbox.judge import TraceBudget
    from autotts.sandbox.supervisor import _Task

    request = {"source": "", "filename": "f.py", "admit": True, "betas": [0.5], "overrides": {},
               "proto": {"draws": 8, "protocol": "shuffle", "pool": None, "seed": 0,
                         "probe_cost": 3, "budget": 400},
               "traces": True, "trace_draws": trace_draws, "on_error": "record",
               "limits": FAST.__dict__, "allow_weak": True}
    units = [(0, 0, d, d + 1) for d in range(8)]
    task = _Task(request, [STORE.replay()], units, FAST, TraceBudget(10_000), None)
    return [task.units[task.batches[b][0]][2] for b in task.todo]


def test_the_batch_order_does_not_tell_the_traced_draws():
    """Batches are forked one after another, so a batch process with code execution knows its
    place in the order (its pid in the sandbox's pid namespace, the time since the sandbox
    started). With trace_draws the order is a secret permutation: the traced draws are not
    simply the first batches."""
    orders = {tuple(_task_order(2)) for _ in range(20)}
    assert len(orders) > 1  # 8! orders: twenty equal draws would be a 1 in 40320**19 event
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert _task_order(None) == list(range(8))  # without trace_draws: draw order, as before


_SPY_RAISES = '''
HELD = []


class Spy(dict):
    def items(self):
        if HELD:
            HELD[0].advance(0)  # a handle, used from the scheduler's own context
        raise ValueError("boom")


class Tell:
    NAME = "tell"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        HELD.append(ep)
        ep.trace("x", v=Spy(a=1))
        ep.branch()
        return None
'''


@pytest.mark.usefixtures("parent")
def test_candidate_code_run_while_serializing_ends_in_a_typed_verdict():
    """The spy's items() runs in the batch's scheduler (outside any episode): using a handle
    there is refused, and raising ends the run with a typed verdict, never a hang."""
    from autotts.sandbox import SandboxError

    with pytest.raises(SandboxError) as e:
        evaluate_sandboxed(_SPY_RAISES, [STORE], [0.5], PROTO, filename="spy.py", limits=FAST,
                           traces=True, trace_draws=1, on_error="record")
    assert e.value.verdict.kind in ("crash", "exception")
