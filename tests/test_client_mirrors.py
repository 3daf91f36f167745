"""The sandbox client's shared mirrors (autotts.sandbox.client.Mirrors): a round's reveals are
written to every episode's row at once, each handle sees its own row only, a handle of an
ended episode keeps its last state whatever the later episodes reveal, and live handles keep
theirs when the rows move (more episodes than rows, a later episode with a larger pool)."""

from __future__ import annotations

import numpy as np

from autotts.engine import NO_ANSWER
from autotts.sandbox.client import Mirrors


def _round(mirrors, replies, reveals):
    """Apply one round: `reveals` [(slot, [(branch, depth, answer, final), ...]), ...] in row
    order; each slot's handle then gets (generated, probes, actions, arrays, start, end)."""
    slots, counts, flat = [], [], []
    for slot, rs in reveals:
        slots.append(slot)
        counts.append(len(rs))
        flat += rs
    cols = list(zip(*flat, strict=True)) if flat else [(), (), (), ()]
    jb = np.array(cols[0], dtype=np.intp)
    jd = np.array(cols[1], dtype=np.int64)
    ja = np.array(cols[2], dtype=np.int32)
    jf = np.array(cols[3], dtype=bool)
    mirrors.apply(np.array(slots, dtype=np.int64), np.array(counts, dtype=np.int64), jb, jd,
                  ja, jf)
    pos = 0
    for slot, rs in reveals:
        replies[slot] = (10, 0, 1, (jb, jd, ja), pos, pos + len(rs))
        pos += len(rs)


def _open(mirrors, replies, slot, pool):
    return mirrors.open(slot, lambda msg: replies.pop(slot), pool, 1, 1, None, 0, False)


def test_rounds_reach_each_handle_and_an_ended_handle_keeps_its_state():
    m, replies = Mirrors(), {}
    m.make_room(2, 4)
    a, b = _open(m, replies, 0, 4), _open(m, replies, 1, 4)
    # branch_many(3) on both: a's branch 1 is revealed finished (answer 2), b reveals nothing
    _round(m, replies, [(0, [(1, 1, 2, True)]), (1, [])])
    a.branch_many(3)
    b.branch_many(3)
    assert a.finished.tolist() == [False, True, False]
    assert a.running.tolist() == [True, False, True]
    assert a.latest.tolist() == [NO_ANSWER, 2, NO_ANSWER]
    assert b.finished.tolist() == [False] * 3 and b.latest.tolist() == [NO_ANSWER] * 3
    assert b.depths.tolist() == [1, 1, 1]
    # One round, both episodes: reveals of the same branch twice (the last is its latest)
    _round(m, replies, [(1, [(0, 2, 5, False), (0, 3, 6, False)]), (0, [(0, 2, 7, False)])])
    b.advance(0)
    a.advance(0)
    assert b.latest.tolist() == [6, NO_ANSWER, NO_ANSWER] and b.depths.tolist() == [3, 1, 1]
    assert a.latest.tolist() == [7, 2, NO_ANSWER] and a.depths.tolist() == [2, 1, 1]
    assert b.history_depths(0).tolist() == [2, 3] and b.history(0).tolist() == [5, 6]
    # a ends; the next episode has no row left: it and b move to new rows, a's stay as they are
    before = (a.depths, a.latest, a.finished, a.running, a.pruned)
    a.close()
    m.end(0)
    c = _open(m, replies, 2, 4)
    assert c.latest.tolist() == [] and c.num_opened == 0
    _round(m, replies, [(2, [(0, 1, 9, True), (1, 1, 9, True), (2, 1, 3, False)])])
    c.branch_many(4)
    assert c.latest.tolist() == [9, 9, 3, NO_ANSWER]
    assert c.finished.tolist() == [True, True, False, False]
    assert c.depths.tolist() == [1, 1, 1, 1] and c.pruned.tolist() == [False] * 4
    after = (a.depths, a.latest, a.finished, a.running, a.pruned)
    assert all(np.array_equal(x, y) for x, y in zip(before, after, strict=True))
    assert a.history_depths(1).tolist() == [1] and a.history_depths(0).tolist() == [2]


def test_live_handles_keep_their_mirrors_when_the_rows_move():
    m, replies = Mirrors(), {}
    m.make_room(1, 3)
    a = _open(m, replies, 0, 3)
    _round(m, replies, [(0, [(2, 1, 4, True)])])
    a.branch_many(3)
    replies[0] = (11, 0, 2, None, 0, 0)  # a prune reveals nothing
    a.prune(0)
    # A larger pool than the rows hold: the rows move (a's with them)
    b = _open(m, replies, 1, 8)
    assert a.latest.tolist() == [NO_ANSWER, NO_ANSWER, 4]
    assert a.pruned.tolist() == [True, False, False]
    assert a.running.tolist() == [False, True, False]
    _round(m, replies, [(1, [(7, 1, 1, False)]), (0, [(1, 2, 3, False)])])
    b.branch_many(8)
    a.advance(1)
    assert a.latest.tolist() == [NO_ANSWER, 3, 4] and a.depths.tolist() == [1, 2, 1]
    assert b.latest.tolist() == [NO_ANSWER] * 7 + [1] and b.num_opened == 8
    assert a.history_depths(2).tolist() == [1] and a.history_depths(1).tolist() == [2]
