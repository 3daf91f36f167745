"""Red team, session 9: the round's int64 rows (h-wire2), attacked as a child with code execution
(every byte of its frames forged) and as an honest candidate whose results must be those of
in-process evaluation.

Found and fixed:
- A round of more rows than live episodes was turned into Python lists whole before its first
  row was checked: a forged 64 MiB table (1.6 M rows) made the trusted side hold ~7 times that
  (the judge now refuses a round with more rows than episodes waiting on it before reading it).
- The judge read a JSON "branch" / "branch_many" probe flag with bool(): a forged [slot,
  "branch", [5]] was served as a probe where the engine refuses anything but a bool. The flag
  now goes to the engine as sent.
- The client read a probe flag as truthy (`1 if probe else 0`): `ep.branch(1)`,
  `ep.branch(None)`, `ep.branch_many(2, 1)` were served sandboxed and refused in-process (rows
  differed). Its integer and branch-list arguments were read by its own rules: `extend(True)`,
  `read_new_many(2.0)`, `advance_many(["a"])`, `advance_many(np.array([[0]]))`,
  `prune_many(np.array([0.0]))` were refused with other words than in-process, a list holding
  a 0-d array was refused where the engine takes it, and a bad `times` was refused before the
  branches were checked (in-process the branch's refusal comes first). The client now reads
  them with the engine's own functions (engine.as_flag, as_count, branch_indices,
  running_indices over its mirror).
- An integer index array went into the round by reference, and the round is sent once every
  episode of its group has run: an episode that wrote to a scratch buffer the episodes share
  changed what an earlier episode had sent (in-process the engine copies it at the call).

- (Before this session, the supervisor.) The cap on replies a child left unread counted the
  reply being sent: an honest controller that reads every branch with probes over the 8
  reference stores (one reply of ~9.3 MiB) ended with a crash verdict. The cap now counts what
  was left unread before it beyond the other group's reply.

Held (tests below): int64 edge values in every field of every op, rows for a finished, unstarted
or already answered episode, an index array or mask shared between rows, JSON and row forms for
one slot, mask lengths that are not the opened count, a round frame split at every byte, a
reply frame sent to the judge and a round of the reply's five arrays.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from autotts.engine import InvalidAction
from autotts.sandbox.judge import OutputLimit, ProtocolError
from autotts.sandbox.wire import (
    OP_ADVANCE_MANY_IDX,
    OP_ADVANCE_MANY_MASK,
    OP_ANSWER,
    OP_BRANCH,
    OP_BRANCH_MANY,
    OP_JSON,
    OP_PRUNE_MANY_IDX,
    OP_READ_NEW,
    FrameReader,
    pack_frame,
)
from tests.test_round_rows import NO_IDX, NO_MASK, _opened, _send
from tests.test_sandbox import FAST, parent  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import STORE, _busy_task, json_round

I64 = [-(2**63), -(2**31) - 1, -2, -1, 0, 1, 2, 3, 2**31, 2**62, 2**63 - 1]


# ---- a round's size: rows past the live episodes -----------------------------------------------

def test_a_round_of_more_rows_than_live_episodes_is_refused_before_it_is_read():
    """Found: the whole table became Python lists before the first row was checked."""
    task = _busy_task()
    rows = np.zeros((1 << 20, 5), np.int64)
    rows[:, 0] = np.arange(len(rows))  # every row a distinct slot: each is checked in turn
    rows[:, 1] = OP_READ_NEW
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            task.on_frame({"t": "round"}, [rows, NO_IDX, NO_MASK])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the table itself is 40 MiB; as lists it was ~ 150 MiB


# ---- every field at the int64 edges ------------------------------------------------------------

@pytest.mark.parametrize("op", range(-1, 16))
@pytest.mark.parametrize("col", [2, 3, 4])
def test_int64_edges_in_every_field_are_a_protocol_error_or_the_engines_answer(op, col):
    """Each op with a, b or the events flag at the int64 edges (with raw lists that hold
    enough): a ProtocolError, or a reply whose counters are the judge's episode's."""
    for v in I64:
        task = _opened(3)
        row = [0, op, 0, 0, 0]
        row[col] = v
        m = [[0, "advance", [0]]] if op == OP_JSON else None
        try:
            reply = _send(task, [row], np.arange(3, dtype=np.int32), np.ones(3, bool), m=m,
                          e=[[]] if col == 4 and v == 1 else None)
        except (ProtocolError, OutputLimit):
            continue
        rows = reply["arrays"][0]
        if 0 in task.judge.live:
            ep = task.judge.live[0].ep
            assert rows[-1, 1:4].tolist() == [ep.generated_tokens, ep.num_probes, ep.num_actions]


# ---- which episode a row acts for ------------------------------------------------------------------

def test_rows_for_a_finished_unstarted_or_answered_episode_are_protocol_errors():
    task = _opened(2)
    with pytest.raises(ProtocolError):  # answered, then an action in the same round
        _send(task, [[0, OP_ANSWER, 0, 0, 0], [0, OP_READ_NEW, 0, 0, 0]])
    task = _opened(2)
    _send(task, [[0, OP_ANSWER, 0, 0, 0]])
    for row in ([0, OP_READ_NEW, 0, 0, 0], [0, OP_ANSWER, 0, 0, 0]):  # after its end
        with pytest.raises(ProtocolError):
            _send(task, [row])
    task = _busy_task()
    with pytest.raises(ProtocolError):  # the next slot, not started yet
        _send(task, [[task.judge.next, OP_READ_NEW, 0, 0, 0]])
    task = _busy_task()
    with pytest.raises(ProtocolError):  # one slot as a row and as JSON in one round
        _send(task, [[0, OP_READ_NEW, 0, 0, 0], [0, OP_JSON, 0, 0, 0]],
              m=[[0, "read_new", []]])


def test_an_index_list_or_mask_is_taken_by_one_row_only():
    """Rows take the round's raw lists in turn: two rows cannot both read one list."""
    task = _opened(3)
    _send(task, [[1, OP_BRANCH_MANY, 3, 0, 0]])
    with pytest.raises(ProtocolError):
        _send(task, [[0, OP_ADVANCE_MANY_IDX, 2, 1, 0], [1, OP_PRUNE_MANY_IDX, 2, 0, 0]],
              np.array([0, 1], np.int32))
    task = _opened(3)
    _send(task, [[1, OP_BRANCH_MANY, 3, 0, 0]])
    with pytest.raises(ProtocolError):  # a JSON marker after a row that took the list
        _send(task, [[0, OP_ADVANCE_MANY_MASK, 3, 1, 0], [1, OP_JSON, 0, 0, 0]],
              masks=np.ones(3, bool), m=[[1, "prune_many", [["?", 3]]]])


@pytest.mark.parametrize("n", [0, 1, 2, 4, 7])
def test_a_mask_of_another_length_than_opened_is_the_engines_refusal(n):
    task = _opened(3)
    reply = _send(task, [[0, OP_ADVANCE_MANY_MASK, n, 1, 0]], masks=np.ones(n, bool))
    ep = task.judge.live[0].ep
    with pytest.raises(InvalidAction) as e:
        ep.advance_many(np.ones(n, bool))
    assert reply["x"] == [str(e.value)] and reply["arrays"][0][0, 4] == -1


# ---- JSON flags: the engine's to read ------------------------------------------------------------

@pytest.mark.parametrize("flag", [1, 0, 2, None, "x", [], {}, 1.0])
def test_a_json_probe_flag_that_is_no_bool_is_the_engines_refusal(flag):
    """Found: bool(flag) was served (a probe for any truthy value)."""
    for msg in ([0, "branch", [flag]], [0, "branch_many", [1, flag]]):
        task = _busy_task()
        reply = json_round(task, {"t": "round", "m": [msg]})
        assert len(reply["m"][0]) == 5 and type(reply["m"][0][1]) is str, reply["m"]
        assert "probe must be True or False" in reply["m"][0][1]
        assert task.judge.live[0].ep.num_opened == 0


# ---- frames: split at every byte, the reply's form sent back ------------------------------------

def test_a_round_split_at_every_byte_is_the_same_round():
    a, b = _opened(3), _opened(3)
    header = {"t": "round", "k": b.token, "m": [[0, "advance_many", [["#", 2], 2]]],
              "e": [[["ev", {"x": "]"}]]]}
    rows = np.array([[1, OP_BRANCH, 1, 0, 0], [0, OP_JSON, 0, 0, 0], [2, OP_READ_NEW, 0, 0, 1]],
                    np.int64)
    frame = pack_frame(header, [rows, np.array([2, 0], np.int32), NO_MASK])
    reader, frames = FrameReader(1 << 30), []
    for i in range(len(frame)):
        frames += reader.feed(frame[i : i + 1])
        assert len(frames) == (i == len(frame) - 1)
    (h, arrays), = frames
    got = b.on_frame(h, arrays)
    want = a.on_frame({k: v for k, v in header.items() if k != "k"}, [rows, arrays[1], NO_MASK])
    assert got["x"] == want["x"]
    for x, y in itertools.zip_longest(got["arrays"], want["arrays"]):
        assert x.dtype == y.dtype and x.tolist() == y.tolist()


def test_a_reply_sent_to_the_judge_is_a_protocol_error():
    task = _busy_task()
    reply = _send(task, [[0, OP_READ_NEW, 0, 0, 0]])
    with pytest.raises(ProtocolError):  # the judge's own reply, back as a frame
        task.on_frame({k: v for k, v in reply.items() if k != "arrays"}, reply["arrays"])
    with pytest.raises(ProtocolError):  # a round of the reply's five arrays
        task.on_frame({"t": "round"}, reply["arrays"])
    with pytest.raises(ProtocolError):  # its rows as a round's: slot 0's counters as an op
        task.on_frame({"t": "round"}, [reply["arrays"][0], NO_IDX, NO_MASK])


# ---- an honest candidate's odd arguments and shared buffers: as in-process ---------------------

ODD = '''
import numpy as np

SCRATCH = np.zeros(8, dtype=np.int64)  # shared by every episode of a batch


class Odd:
    NAME = "odd"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        tries = [
            lambda: ep.branch(1), lambda: ep.branch(None), lambda: ep.branch_many(2, 1),
            lambda: ep.branch(probe=np.True_), lambda: ep.branch_many(True),
            lambda: ep.branch_many(-1, 5), lambda: ep.branch_many(1, np.False_),
            lambda: ep.extend(True), lambda: ep.advance(np.True_), lambda: ep.probe(1.0),
            lambda: ep.read_new_many(2.0), lambda: ep.read_new_many(-1), lambda: ep.prune("0"),
            lambda: ep.advance_many(["a"]), lambda: ep.advance_many(np.array([[0]])),
            lambda: ep.prune_many(np.array([0.0])), lambda: ep.advance_many([np.array(1)]),
            lambda: ep.advance_many([0], None), lambda: ep.advance_many([0], "2"),
            lambda: ep.advance_many([99], None), lambda: ep.advance_many([True, False]),
            lambda: ep.advance_many(np.array([0, 0])), lambda: ep.advance_many((1,), 2.0),
            lambda: ep.depth(True), lambda: ep.history(np.int8(0)),
        ]
        for k, f in enumerate(tries):
            try:
                out = f()
                ep.trace("ok", k=k, out=None if out is None else np.asarray(out).tolist())
            except Exception as e:
                ep.trace("refused", k=k, why=str(e)[:200])
        # A scratch buffer the batch's episodes share: written, sent, and (by the next episode
        # of the round) written again before the round leaves.
        n = ep.num_opened
        SCRATCH[:2] = [n - 1, n - 2] if ep.pool_size % 2 else [n - 2, n - 1]
        ep.trace("sent", out=ep.advance_many(SCRATCH[:2]).tolist())
        SCRATCH[:2] = 0
        return int(ep.latest[0])
'''


@pytest.mark.usefixtures("parent")
def test_odd_arguments_and_shared_buffers_give_in_process_results(tmp_path):
    """Found: truthy probe flags served, other words for refused arguments, a bad `times`
    refused before the branches, a shared index buffer rewritten before its round left."""
    from autotts.evaluate import EvalProtocol, evaluate
    from autotts.sandbox import evaluate_sandboxed

    path = tmp_path / "odd.py"
    path.write_text(ODD)
    proto = EvalProtocol(draws=2)
    a = evaluate(str(path), [STORE], [0.5], proto, episodes=True, traces=True,
                 on_error="record")
    b = evaluate_sandboxed(ODD, [STORE], [0.5], proto, episodes=True, traces=True,
                           on_error="record", limits=FAST, filename=str(path))
    ea = [e for t in a.traces for e in t["events"] if e["ev"] in ("ok", "refused", "sent")]
    eb = [e for t in b.traces for e in t["events"] if e["ev"] in ("ok", "refused", "sent")]
    for x, y in zip(ea, eb, strict=True):
        assert x == y
    assert a.rows == b.rows and a.episodes == b.episodes and a.errors == b.errors
    assert a.traces == b.traces


# ---- a reply larger than the cap on unread replies ------------------------------------------------

def test_a_reply_larger_than_the_unread_cap_is_sent_and_a_child_that_never_reads_still_ends():
    """Found (before this session, in the supervisor): the cap on replies left unread counted
    the reply being sent. A round in which every episode reads every branch with probes makes
    one reply of the round's reveals: over the 8 reference stores (one batch of 240 episodes,
    two groups) ~9.3 MiB, and an honest controller (branch_many(pool), then advance_many(all,
    1000)) ended with a crash verdict it does not get in-process. The cap now counts what was
    left unread before the reply beyond the last one (the other group's reply, which a batch
    reads after this round's)."""
    import os
    import selectors
    from types import SimpleNamespace

    from autotts.sandbox import supervisor as sup

    r, w = os.pipe()
    os.set_blocking(w, False)
    stdin = os.fdopen(w, "wb", buffering=0)
    c = SimpleNamespace(proc=SimpleNamespace(stdin=stdin), outbuf=bytearray(),
                        waiting_to_write=False, last_frame=0)
    sel = selectors.DefaultSelector()
    big = np.zeros(sup.MAX_PENDING + (1 << 20), np.uint8)
    try:
        sup._send(c, sel, {"t": "reply", "arrays": [big]})  # group 0's round
        sup._send(c, sel, {"t": "reply", "arrays": [big]})  # group 1's, 0's not yet read
        with pytest.raises(ProtocolError, match="left unread"):  # and never read
            sup._send(c, sel, {"t": "reply", "arrays": [big]})
        assert len(c.outbuf) < 4 * len(big)
    finally:
        sel.close()
        stdin.close()
        os.close(r)


# ---- the zygote's own state, as a batch with code execution sees it ---------------------------

_ZYGOTE_STATE = '''        import autotts.sandbox.child as sandbox_child
        flags = sandbox_child.FD_FLAGS  # what the zygote restores after each batch
        n = flags.get(-1, 0) + 1
        flags[-1] = n  # a counter in the sandbox's module state, and a bogus descriptor entry
        for fd in list(flags):
            if fd >= 0:
                flags[fd] = flags[fd] | os.O_APPEND | os.O_NONBLOCK
        if isinstance(sandbox_child.BUILTINS, dict):  # built once by the zygote (restricted runs)
            sandbox_child.BUILTINS["seen"] = n
        raise ValueError(f"episode {n} of this process")
'''


@pytest.mark.usefixtures("parent")
def test_the_zygote_state_a_batch_writes_stays_in_that_batch():
    """A batch with code execution rewrites the sandbox module's state that the zygote reads
    between batches (FD_FLAGS, which it restores after each waitpid; BUILTINS, built once and
    inherited by every fork): every batch is a fork, so the next one starts from the zygote's
    own copy. Each batch counts its episodes from 1 and the run ends normally."""
    from tests.test_redteam_session5 import _counts
    from tests.test_sandbox_boundary import PROTO, _controller, _run

    ev = _run(_controller(_ZYGOTE_STATE), on_error="record")
    counts = _counts(ev)
    q = len(STORE.questions)
    assert len(counts) == PROTO.draws * q
    assert max(counts) == q, f"episodes counted across batches: {counts}"
