"""Red team, session 12: the boundary's new fast paths. The sandbox client keeps its live
episodes' mirrors as rows of shared arrays (client.Mirrors) and applies a round's reveals at
once (child.Scheduler._on_reply); the judge's serve() takes an advance_many row's mask inline;
the engine has a path of its own for advance_many(bool mask, times=1) and keeps each branch's
next cell (_cell = _qbase + _depth); batches may run with one group of episodes (groups=1).

Nothing was found broken. Held (asserted below, each pinning a property the new code must
keep):
- The engine's mask path and its general path (reached with times=np.int64(1)) give the same
  refusals (words), budget admission, return values (dtype too), journal, trace, class-id
  numbering and state, for masks that are views, strided, broadcast, read-only, of the wrong
  length, or the episode's own `running` / `finished`; and the next-cell cache equals
  _qbase + _depth for every running branch after every action, refused or not, of every kind.
- Forged rounds against serve()'s inline mask take: a count past the round's masks, a negative
  or int64-edge count, two rows for one slot, a row for an episode that ended or never started
  are protocol errors; a mask naming a finished or pruned branch, or of the wrong length, is
  the engine's refusal word for word; a mask of non-canonical bool bytes (2..255) is answered
  as the engine answers the same array; the judge keeps no reference to the frame's masks.
- A restricted controller that writes into every array the handle gives it (properties,
  return values of branch_many / advance_many / read_new_many / history), keeps the handles of
  its ended episodes and checks that they still read their last state while later episodes
  move the shared mirror rows (a window of 3, pools of 8 and 24 branches in one batch, so rows
  run out and widen), and catches refusals and plays on, gets the in-process rows, episodes,
  errors and traces, with one group and with two: the client hands out no view of a shared
  mirror array.
- With code execution in the batch (lead, last attack): ignoring the grouping it was told
  (two groups where told one, one where told two) or sending every advance_many in a round of
  its own changes the number of rounds and nothing else: the in-process rows and episodes.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from autotts.engine import Episode, InvalidAction, Question
from autotts.evaluate import EvalProtocol, evaluate
from autotts.sandbox import evaluate_sandboxed
from autotts.sandbox import evaluation as evaluation_module
from autotts.sandbox.judge import ProtocolError, UnitJudge
from autotts.sandbox.wire import (
    OP_ADVANCE_MANY_MASK,
    OP_ANSWER,
    OP_BRANCH_MANY,
    OP_PRUNE,
    REFUSED,
)
from tests.test_engine_fastpaths import wide_question
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import _busy_task

# ---- the engine: the mask path against the general path, and the next-cell cache ----------------

_STATE = ("_depth", "_cell", "_latest", "_finished", "_running", "_pruned", "_hidden",
          "_id_of_class")


def _odd_mask(rng: random.Random, ep: Episode) -> np.ndarray:
    """A bool mask of any make: views, strided, broadcast, read-only, the episode's own arrays,
    and sometimes the wrong length."""
    n = ep.num_opened
    k = rng.choice([n] * 8 + [max(n - 1, 0), n + 1, 0])
    mask = np.array([rng.random() < 0.7 for _ in range(k)], dtype=bool)
    r = rng.random()
    if r < 0.15:
        mask = np.repeat(mask, 2)[::2]  # strided view
    elif r < 0.25 and k:
        mask = np.broadcast_to(mask[:1], (k,))  # read-only, stride 0
    elif r < 0.35:
        mask = ep.running
    elif r < 0.4:
        mask = ep.finished  # refused if any has finished
    elif r < 0.45:
        mask = mask.copy()
        mask.flags.writeable = False
    return mask


@pytest.mark.parametrize("seed", range(8))
def test_the_mask_path_is_the_general_path_and_keeps_the_next_cell_cache(seed):
    """Twin episodes, one given advance_many(mask) (the new path), the other the same mask
    with times=np.int64(1) (the general path), every other action alike: same refusals,
    returns, journal, trace, ids and state after every step; the next-cell cache is
    _qbase + _depth for every running branch."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    for _ in range(12):
        m = int(nrng.integers(3, 60))
        data, _, _ = wide_question(nrng, m)
        q = Question(data, 0)
        order = nrng.permutation(m)
        budget = None if rng.random() < 0.5 else int(nrng.integers(50, 300 * data.delta))
        kw = dict(probe_cost=3, budget=budget, journal=rng.random() < 0.7,
                  trace=rng.random() < 0.5)
        fast, slow = Episode(q, order, **kw), Episode(q, order, **kw)
        for step in range(50):
            n = fast.num_opened
            r = rng.random()
            if r < 0.1:
                name, args = "branch_many", (rng.randint(0, 4), rng.random() < 0.5)
            elif r < 0.14:
                name, args = "branch", (rng.random() < 0.5,)
            elif r < 0.18:
                name, args = "read_new", ()
            elif r < 0.22:
                name, args = "read_new_many", (rng.randint(0, 3),)
            elif r < 0.34:
                name = rng.choice(["extend", "probe", "advance", "read", "prune"])
                args = (rng.randint(-1, n),)
            elif r < 0.38:
                name, args = "prune_many", (np.array([rng.random() < 0.2 for _ in range(n)]),)
            else:
                name, args = "advance_many", (_odd_mask(rng, fast),)
            got = []
            for ep, extra in ((fast, (1,)), (slow, (np.int64(1),))):
                call = args + extra if name == "advance_many" else args
                try:
                    got.append(("ok", getattr(ep, name)(*call)))
                except InvalidAction as e:
                    got.append(("refused", str(e)))
            (k1, v1), (k2, v2) = got
            assert k1 == k2, (seed, step, name, got)
            if isinstance(v1, np.ndarray):
                assert v1.dtype == v2.dtype and np.array_equal(v1, v2), (seed, step, name)
            else:
                assert v1 == v2, (seed, step, name)
            if kw["journal"]:
                for a, b in zip(fast.take_journal(), slow.take_journal(), strict=True):
                    assert a.dtype == b.dtype and np.array_equal(a, b), (seed, step, name)
            for attr in _STATE:
                assert np.array_equal(getattr(fast, attr), getattr(slow, attr)), (step, attr)
            assert fast._class_of_id == slow._class_of_id
            assert (fast.tokens, fast.num_probes, fast.num_actions) == (
                slow.tokens, slow.num_probes, slow.num_actions)
            assert fast.trace_events() == slow.trace_events()
            run = fast._running[: fast.num_opened]
            want = (fast._qbase + fast._depth)[: fast.num_opened][run]
            assert np.array_equal(fast._cell[: fast.num_opened][run], want), (seed, step, name)


# ---- the judge: forged rounds against serve()'s inline mask take --------------------------------


def _round(task, rows, masks=(), idx=()):
    return task.on_frame({"t": "round"}, [np.array(rows, np.int64).reshape(-1, 5),
                                          np.array(idx, np.int32), np.array(masks, bool)])


def _opened_task():
    """A busy task whose two episodes (slots 0, 1: questions 0, 1) have 4 branches open."""
    task = _busy_task()
    _round(task, [[0, OP_BRANCH_MANY, 4, 1, 0], [1, OP_BRANCH_MANY, 4, 1, 0]])
    return task


@pytest.mark.parametrize("rows, masks", [
    ([[0, OP_ADVANCE_MANY_MASK, 5, 1, 0]], [1, 1, 1, 1]),  # past the round's masks
    ([[0, OP_ADVANCE_MANY_MASK, 4, 1, 0], [1, OP_ADVANCE_MANY_MASK, 4, 1, 0]], [1] * 7),
    ([[0, OP_ADVANCE_MANY_MASK, -1, 1, 0]], [1, 1, 1, 1]),
    ([[0, OP_ADVANCE_MANY_MASK, -(2**63), 1, 0]], [1, 1, 1, 1]),
    ([[0, OP_ADVANCE_MANY_MASK, 2**63 - 1, 1, 0]], [1, 1, 1, 1]),
    ([[0, OP_ADVANCE_MANY_MASK, 2, 1, 0], [0, OP_ADVANCE_MANY_MASK, 2, 1, 0]], [1, 1, 1, 1]),
    ([[10**6, OP_ADVANCE_MANY_MASK, 4, 1, 0]], [1, 1, 1, 1]),  # an episode not started
    ([[-1, OP_ADVANCE_MANY_MASK, 4, 1, 0]], [1, 1, 1, 1]),
    ([[0, OP_ADVANCE_MANY_MASK, 0, 1, 0]], [1, 1, 1, 1]),  # an empty mask, 4 left over
])
def test_forged_mask_rows_are_protocol_errors(rows, masks):
    """(The last is no protocol error: the row, an empty mask, is the engine's refusal, and
    masks that no row takes are left unread, as indices are: unlike JSON messages and trace
    events, raw entries carry nothing the judge would act on, and the frame caps bound them.)"""
    task = _opened_task()
    if rows[0][2] == 0:
        reply = _round(task, rows, masks)
        assert reply["arrays"][0][0][4] == REFUSED
        assert reply["x"] == ["advance_many: which must be a mask with one entry per opened "
                              "branch (4)"]
        return
    with pytest.raises(ProtocolError):
        _round(task, rows, masks)


def test_a_mask_row_for_an_ended_episode_is_a_protocol_error():
    task = _opened_task()
    _round(task, [[0, OP_ANSWER, 0, 0, 0]])
    with pytest.raises(ProtocolError):
        _round(task, [[0, OP_ADVANCE_MANY_MASK, 4, 1, 0]], [1, 1, 1, 1])


def _twin(slot):
    """The engine's own episode of slot `slot` of _busy_task, 4 branches opened with probes."""
    ref = _busy_task()
    _round(ref, [[0, OP_BRANCH_MANY, 4, 1, 0], [1, OP_BRANCH_MANY, 4, 1, 0]])
    return ref.judge.live[slot].ep


def _check(reply, calls):
    """The reply's rows against the engine's own answers: `calls` [(episode, mask), ...] in
    row order, applied to the twin episodes here."""
    table, jb, jd, ja, jf = (a.tolist() for a in reply["arrays"])
    refusals, pos = iter(reply["x"]), 0
    for (ep, mask), got in zip(calls, table, strict=True):
        try:
            ep.advance_many(mask)
            want = None
        except InvalidAction as e:
            want = str(e)
        assert got[1:4] == [ep.generated_tokens, ep.num_probes, ep.num_actions]
        if want is not None:
            assert got[4] == REFUSED and next(refusals) == want
            continue
        journal: list = []
        n = ep.move_journal(journal)
        assert got[4] == n
        if n:
            b, d, a, f = (np.concatenate(c).tolist() for c in zip(*journal, strict=True))
            assert (jb[pos:pos + n], jd[pos:pos + n], ja[pos:pos + n], jf[pos:pos + n]) == (
                b, d, a, f)
        pos += n
    assert next(refusals, None) is None and pos == len(jb)


def test_forged_masks_are_answered_as_the_engine_answers_them():
    """A pruned branch, finished ones, bytes 2..255 as bools, masks until every branch has
    finished: each row's reply is the engine's for the same array, word for word; and the
    judge keeps no reference to a frame's masks."""
    task = _opened_task()
    ep0, ep1 = _twin(0), _twin(1)
    _round(task, [[0, OP_PRUNE, 2, 0, 0]])
    ep0.prune(2)
    reply = _round(task, [[0, OP_ADVANCE_MANY_MASK, 4, 1, 0], [1, OP_ADVANCE_MANY_MASK, 4, 1, 0]],
                   [0, 1, 1, 0, 0, 1, 0, 1])
    _check(reply, [(ep0, np.array([0, 1, 1, 0], bool)), (ep1, np.array([0, 1, 0, 1], bool))])
    assert reply["x"] == ["branch 2 is pruned"]
    # non-canonical bools from the wire (a forged frame's bytes): as the engine reads them
    for raw in ([7, 0, 0, 0], [0, 2, 0, 255], [0, 0, 0, 0]):
        masks = np.frombuffer(bytes(raw + raw), dtype=bool)
        arrays = [np.array([[0, OP_ADVANCE_MANY_MASK, 4, 1, 0], [1, OP_ADVANCE_MANY_MASK, 4, 1, 0]],
                           np.int64), np.zeros(0, np.int32), masks.copy()]
        reply = task.on_frame({"t": "round"}, arrays)
        frozen = [x.copy() for x in reply["arrays"]]
        arrays[2][:] = True  # the judge kept nothing of the frame's masks
        assert all(np.array_equal(x, y) for x, y in zip(frozen, reply["arrays"], strict=True))
        _check(reply, [(ep0, masks[:4].copy()), (ep1, masks[4:].copy())])
    # the episodes' own running masks until nothing runs, then a mask of finished branches
    for _ in range(12):
        r0, r1 = ep0.running, ep1.running
        reply = _round(task, [[0, OP_ADVANCE_MANY_MASK, 4, 1, 0],
                              [1, OP_ADVANCE_MANY_MASK, 4, 1, 0]], [*r0, *r1])
        _check(reply, [(ep0, r0), (ep1, r1)])
    assert not ep1.running.any() or ep1.tokens >= 400
    reply = _round(task, [[1, OP_ADVANCE_MANY_MASK, 4, 1, 0]], [1, 1, 1, 1])
    _check(reply, [(ep1, np.ones(4, bool))])
    assert reply["x"]


# ---- the client: a hostile but legal controller, sandboxed and in-process ----------------------

# Writes into every array it is given; keeps its ended episodes' handles with a snapshot of
# their last state and checks, in every later episode, that they still read it (while the
# shared mirror rows move) and that acting on them is refused; catches refusals and plays on.
# Traces only what does not depend on which episodes of the batch ran first (a window > 1
# runs them side by side in the sandbox).
_HOSTILE = '''
import numpy as np


class Hostile:
    NAME = "hostile"
    kept = []

    @staticmethod
    def schedule(beta):
        return {}

    def state(self, ep):
        return str([ep.num_opened, ep.depths.tolist(), ep.latest.tolist(),
                    ep.finished.tolist(), ep.running.tolist(), ep.pruned.tolist(),
                    ep.final_answers.tolist(), ep.tokens, ep.num_probes, ep.num_actions])

    def spoil(self, ep):
        for arr in (ep.depths, ep.latest, ep.finished, ep.running, ep.pruned, ep.final_answers):
            arr[...] = 1

    def run(self, ep):
        same, refused = True, True
        for old, snap in Hostile.kept:
            self.spoil(old)
            same = same and self.state(old) == snap
            try:
                old.advance_many(old.running)
                refused = False
            except Exception:
                pass
        ep.trace("kept", same=same, refused=refused)
        idx = ep.branch_many(min(5, ep.pool_size), probe=True)
        idx[:] = 0
        k = 0
        while k < 8:
            k += 1
            self.spoil(ep)
            r = ep.running
            if not r.any():
                break
            got = ep.advance_many(r)
            ep.trace("got", got=got.tolist(), state=self.state(ep))
            got[:] = 99
            r[:] = True
            try:
                ep.advance_many(ep.finished)
            except Exception as e:
                ep.trace("refused", message=str(e))
            try:
                ep.advance_many(np.ones(ep.num_opened + 1, dtype=bool))
            except Exception as e:
                ep.trace("refused", message=str(e))
            if k == 2 and ep.num_opened < ep.pool_size:
                new = ep.read_new_many(1)
                ep.trace("new", new=new.tolist())
                new[:] = 42
            if k == 3:
                ep.prune(0)
        h = ep.history(1)
        ep.trace("history", h=h.tolist(), d=ep.history_depths(1).tolist())
        h[:] = 7
        ep.trace("end", state=self.state(ep), h=ep.history(1).tolist())
        Hostile.kept.append((ep, self.state(ep)))
        latest = ep.latest
        return int(latest.max())
'''

_STORES = [synthetic_store(n_questions=5, n_branches=8, seed=1),
           synthetic_store(n_questions=5, n_branches=24, seed=2)]


@pytest.mark.usefixtures("parent")
def test_a_hostile_legal_controller_gets_in_process_results_while_rows_move(tmp_path,
                                                                           monkeypatch):
    """Same rows, episodes, errors and traces sandboxed as in-process, with a window of 3
    (the rows run out and move; a 24-branch pool after an 8-branch one widens them) and of
    256, one group and two."""
    path = tmp_path / "hostile.py"
    path.write_text(_HOSTILE)
    proto = EvalProtocol(draws=2)
    ip = evaluate(str(path), _STORES, [0.5], proto, traces=True, episodes=True,
                  on_error="record")
    assert not ip.errors
    events = [e for t in ip.traces for e in t["events"]]
    assert {e["ev"] for e in events} >= {"kept", "got", "refused", "new", "history", "end"}
    assert all(e["same"] and e["refused"] for e in events if e["ev"] == "kept")
    for window, groups in ((3, 1), (3, 2), (256, 1), (256, 2)):
        monkeypatch.setattr(evaluation_module, "round_groups", lambda ex, g=groups: g)
        sb = evaluate_sandboxed(_HOSTILE, _STORES, [0.5], proto, filename="hostile.py",
                                limits=replace(FAST, window=window), traces=True,
                                episodes=True, on_error="record")
        assert sb.errors == ip.errors, (window, groups)
        assert sb.rows == ip.rows, (window, groups)
        assert sb.episodes == ip.episodes, (window, groups)
        assert sb.traces == ip.traces, (window, groups)


# ---- code execution in the batch: the grouping is the child's to choose, and buys nothing ------

# With code execution a batch may read the request it was sent (its `groups` tells it how the
# evaluation's workers sit on the cores: one more thing, beside the knobs and the draw's
# position, by which it can tell a smoke run from a sweep, as docs/sandbox.md says it can) and
# ignore it: play two groups where it was told one, one where told two, or send every action
# in a round of its own. The judge answers every row by its slot whatever the grouping, so the
# figures are the episodes' own: what a controller that plays the same actions gets in-process.
_REGROUP = '''
import autotts.sandbox.child as sandbox_child

_init = sandbox_child.Scheduler.__init__


def _regrouped(self, *a, **kw):
    _init(self, *a, **kw)
    self.groups = {how}


sandbox_child.Scheduler.__init__ = _regrouped
_send_round = sandbox_child.Scheduler._send_round


def _singles(self, g):
    # each advance_many row of the group's round in a frame of its own, each answered before
    # the next (rows are (slot, op, a, b, e); a row's branch list is the next of its kind);
    # the rest of the round (answers, which may end the batch) goes as one frame, as usual
    rows, masks, idx = self.rows[g], self.masks[g], self.indices[g]
    while {singles} and len(rows) > 5 and rows[1] in (1, 2) and not rows[4]:
        row = rows[:5]
        del rows[:5]
        one_masks = [masks.pop(0)] if row[1] == 2 else []
        one_idx = [idx.pop(0)] if row[1] == 1 else []
        self.rows[g], self.masks[g], self.indices[g] = row, one_masks, one_idx
        _send_round(self, g)
        self.in_flight.pop()
        reply, arrays = self._read()
        assert not reply["start"] and not reply["end"]  # no episode ended in this frame
        self._on_reply(g, reply, arrays)
        rows, masks, idx = rows + self.rows[g], masks + self.masks[g], idx + self.indices[g]
    self.rows[g], self.masks[g], self.indices[g] = rows, masks, idx
    _send_round(self, g)


_run_unit = sandbox_child.Scheduler.run_unit


def _run(self, unit, read):
    self._read = read
    return _run_unit(self, unit, read)


sandbox_child.Scheduler._send_round = _singles
sandbox_child.Scheduler.run_unit = _run
'''

_STEPS = '''

class Steps:
    NAME = "steps"

    @staticmethod
    def schedule(beta):
        return {"width": 2 + int(6 * beta)}

    def __init__(self, width=2):
        self.width = width

    def run(self, ep):
        ep.branch_many(min(self.width, ep.pool_size), probe=True)
        for _ in range(6):
            if not ep.running.any():
                break
            ep.advance_many(ep.running)
        latest = ep.latest
        return int(latest.max()) if len(latest) else None
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize(("told", "plays", "singles"),
                         [(1, 2, False), (2, 1, False), (1, 1, True)])
def test_a_batch_that_regroups_its_rounds_gets_the_episodes_own_figures(tmp_path, monkeypatch,
                                                                        told, plays, singles):
    path = tmp_path / "steps.py"
    path.write_text(_STEPS)
    proto = EvalProtocol(draws=2)
    ip = evaluate(str(path), _STORES, [0.0, 1.0], proto, episodes=True, on_error="record")
    monkeypatch.setattr(evaluation_module, "round_groups", lambda ex: told)
    rounds: list[int] = []
    serve = UnitJudge.serve
    monkeypatch.setattr(UnitJudge, "serve",  # one worker: the judge runs here
                        lambda self, *a, **kw: rounds.append(1) or serve(self, *a, **kw))
    runs = {}
    for attacked in (False, True):
        rounds.clear()
        src = (_REGROUP.replace("{how}", str(plays)).replace("{singles}", str(singles))
               if attacked else "") + _STEPS
        sb = evaluate_sandboxed(src, _STORES, [0.0, 1.0], proto, filename="steps.py",
                                limits=FAST, episodes=True, on_error="record",
                                _unrestricted=True)
        runs[attacked] = (sb, len(rounds))
    sb, n = runs[True]
    assert n != runs[False][1]  # the attack took effect: another number of rounds
    assert not sb.errors
    assert sb.rows == ip.rows
    assert sb.episodes == ip.episodes
