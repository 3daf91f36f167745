"""Many episodes' advance_many(mask) at once (engine.advance_masks_once, the judge's usual row)
reaches exactly what each Episode reaches on its own.

Random questions of several stores (math stores' -1 class, an ERR class, many classes, branches
of 0 to 8 probes, partial pools), budgets and κ run in lockstep: episodes whose arrays are rows
of one EpisodeSlab, stepped together, against plain per-episode Episodes, with masks naming
running, pruned and finished branches, empty masks, ended episodes, and new classes appearing.
After every round the whole state, the journal and the refusals are compared. Then the judge:
a UnitJudge that steps its rows together against one that applies them one by one, on random
rounds of every row kind (rows reused by new episodes, masks of the wrong length, `times` 2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autotts.engine import (
    Episode,
    EpisodeSlab,
    InvalidAction,
    Question,
    StepTables,
    advance_masks_once,
)
from autotts.sandbox.judge import TraceBudget, UnitJudge
from autotts.sandbox.wire import (
    OP_ADVANCE_MANY_IDX,
    OP_ADVANCE_MANY_MASK,
    OP_ANSWER,
    OP_BRANCH_MANY,
    OP_EXTEND,
    OP_PRUNE_MANY_MASK,
    OP_READ_NEW,
)
from autotts.store import ReplayData
from autotts.units import EvalProtocol, Questions
from tests.semantics_ref import RefBranch
from tests.test_semantics_fuzz import snapshot


def random_store(rng: np.random.Generator, questions: int, name: str = "s") -> ReplayData:
    """A store of `questions` random questions (one kind: math -1 classes or an ERR class)."""
    delta = int(rng.choice([1, 10]))
    math_like = rng.random() < 0.5
    lo = -1 if math_like else 0
    rows: list[RefBranch] = []
    offsets, errs = [0], []
    for _ in range(questions):
        m = int(rng.integers(1, 70))
        n_cls = int(rng.integers(1, 60))
        for _ in range(m):
            n = int(rng.integers(0, 9))
            rows.append(RefBranch([int(c) for c in rng.integers(lo, n_cls, size=n)],
                                  int(rng.integers(0, (n + 2) * delta + 1)),
                                  int(rng.integers(lo, n_cls))))
        offsets.append(len(rows))
        errs.append(-1 if math_like or rng.random() < 0.3 else int(rng.integers(0, n_cls)))
    p_off = np.concatenate([[0], np.cumsum([len(b.probes) for b in rows])]).astype(np.int64)
    return ReplayData(
        name=name, delta=delta, branch_offsets=np.array(offsets, dtype=np.int64),
        tokens=np.array([b.tokens for b in rows], dtype=np.int32),
        final_class=np.array([b.final for b in rows], dtype=np.int32),
        probe_offsets=p_off,
        probe_class=np.array([c for b in rows for c in b.probes], dtype=np.int32),
        err_class=np.array(errs, dtype=np.int32),
    )


def state(ep: Episode) -> dict[str, Any]:
    """Everything an episode holds, public and internal."""
    out = snapshot(ep) if not ep._closed else {}
    n = ep._pool
    out.update({
        "cell": ep._cell[:n].tolist(), "depth": ep._depth[:n].tolist(),
        "latest_all": ep._latest[:n].tolist(), "running_all": ep._running[:n].tolist(),
        "finished_all": ep._finished[:n].tolist(), "pruned_all": ep._pruned.tolist(),
        "ids": ep._id_of_class.tolist(), "classes": list(ep._class_of_id),
        "hidden": ep._hidden.tolist(), "counters": (ep._generated, ep._probes, ep._actions,
                                                    ep._opened, ep._closed),
        "journal": list(ep._journal or []),
        "trace": None if ep._trace is None else list(ep._trace),
    })
    return out


def journal_of(ep: Episode) -> list[list[Any]]:
    return [c.tolist() for c in ep.take_journal()]


def act(ep: Episode, name: str, args: tuple[Any, ...]) -> Any:
    try:
        out = getattr(ep, name)(*args)
    except InvalidAction as e:
        return ("refused", str(e))
    return out.tolist() if isinstance(out, np.ndarray) else out


def random_mask(rng: np.random.Generator, ep: Episode) -> np.ndarray:
    """A mask over the opened branches: mostly the running ones, sometimes a subset, none, or
    one naming a pruned or finished branch (refused)."""
    running = ep._running[: ep._opened].copy()
    r = rng.random()
    if r < 0.6 or not ep._opened:
        return running
    if r < 0.8:
        return running & (rng.random(len(running)) < 0.5)
    if r < 0.85:
        return np.zeros(ep._opened, dtype=bool)
    mask = running.copy()
    mask[int(rng.integers(0, ep._opened))] = True  # perhaps a pruned or finished one
    return mask


def other_action(rng: np.random.Generator, ep: Episode) -> tuple[str, tuple[Any, ...]]:
    opened, pool = ep._opened, ep._pool
    r = rng.random()
    if r < 0.3 or not opened:
        return "branch_many", (int(rng.integers(0, pool - opened + 1)), bool(rng.random() < 0.5))
    if r < 0.4:
        return "read_new", ()
    if r < 0.5:
        return "prune_many", (rng.random(opened) < 0.2,)
    i = int(rng.integers(0, opened))
    if r < 0.6:
        return "extend", (i,)
    if r < 0.7:
        return "probe", (i,)
    if r < 0.8:
        return "read", (i,)
    if r < 0.9:
        return "advance_many", (ep._running[:opened].nonzero()[0], int(rng.integers(1, 4)))
    return "advance", (i,)


@pytest.mark.parametrize("seed", range(16))
def test_slab_episodes_step_as_each_alone(seed):
    rng = np.random.default_rng(seed)
    stores = [random_store(rng, int(rng.integers(1, 6)), f"s{k}") for k in range(3)]
    questions = [Question(d, q) for d in stores for q in range(d.num_questions)]
    tables = StepTables(questions)
    rows = int(rng.integers(4, 30))
    slab = EpisodeSlab(rows, tables.width, tables.classes)
    probe_cost = int(rng.choice([0, 1, 3]))
    starts = np.cumsum([0] + [q.num_branches * q._width for q in questions]).tolist()
    pairs: dict[int, tuple[Episode, Episode, int]] = {}  # row -> (slab episode, alone, offset)

    def start(row: int) -> None:
        k = int(rng.integers(0, len(questions)))
        q = questions[k]
        m = q.num_branches
        order = rng.permutation(m)[: int(rng.integers(1, m + 1))]  # a partial pool
        budget = None if rng.random() < 0.5 else int(rng.integers(0, 200 * q.delta))
        trace = bool(rng.random() < 0.3)  # a traced episode logs each action as it steps
        a = Episode(q, order, probe_cost=probe_cost, budget=budget, journal=True, trace=trace,
                    storage=slab.storage(row, q, len(order)))
        b = Episode(q, order, probe_cost=probe_cost, budget=budget, journal=True, trace=trace)
        assert tables.offset(k) == starts[k]
        pairs[row] = (a, b, starts[k])
        assert state(a) == state(b)
        if rng.random() < 0.5:  # all of the pool open, nothing shown: many new classes at once
            assert act(a, "branch_many", (len(order),)) == act(b, "branch_many", (len(order),))
            assert journal_of(a) == journal_of(b)

    for row in range(rows):
        start(row)
    stepped = refused = new_classes = 0
    for _ in range(30):
        batch = []
        for row in rng.permutation(rows).tolist():
            a, b, _ = pairs[row]
            r = rng.random()
            if r < 0.03 and not a._closed:
                a.close()
                b.close()
            elif r < 0.08 and a._closed:  # the row goes to a new episode
                start(row)
            elif r < 0.7 or a._closed:
                batch.append((row, random_mask(rng, b)))
            else:
                name, args = other_action(rng, b)
                assert act(a, name, args) == act(b, name, args)
                assert journal_of(a) == journal_of(b)
        if not batch:
            continue
        eps = [pairs[row][0] for row, _ in batch]
        known = [len(e._class_of_id) for e in eps]
        st = advance_masks_once(slab, tables, eps, [row for row, _ in batch],
                                [pairs[row][2] for row, _ in batch],
                                np.concatenate([m for _, m in batch]))
        assert len(st.n) == len(batch)
        at = 0
        for j, (row, mask) in enumerate(batch):
            a, b, _ = pairs[row]
            alone = act(b, "advance_many", (mask,))
            if st.n[j] < 0:  # left to the per-episode path, which must refuse it
                assert isinstance(alone, tuple) and alone[0] == "refused"
                assert act(a, "advance_many", (mask,)) == alone
                refused += 1
            else:
                assert not (isinstance(alone, tuple) and alone[0] == "refused")
                want = journal_of(b)
                got = [c[at : at + st.n[j]].tolist() for c in st.reveals]
                at += st.n[j]
                assert got == (want if want[0] else [[], [], [], []])
                assert (st.generated[j], st.probes[j], st.actions[j]) == (
                    b.generated_tokens, b.num_probes, b.num_actions)
                assert alone == a.latest[mask].tolist()
                stepped += 1
                new_classes += len(a._class_of_id) > known[j]
            assert state(a) == state(b)
        assert at == len(st.reveals[0])
        assert [c.dtype for c in st.reveals] == [np.int64, np.int64, np.int32, bool]
        for a, b, _ in pairs.values():
            assert state(a) == state(b)
    assert stepped > 20 and refused > 0 and new_classes > 0


def test_storage_rows_must_fit():
    rng = np.random.default_rng(1)
    d = random_store(rng, 2)
    q = Question(d, 0)
    slab = EpisodeSlab(2, q.num_branches, len(q._id_template))
    with pytest.raises(ValueError):
        slab.storage(2, q, q.num_branches)
    with pytest.raises(ValueError):
        slab.storage(0, q, q.num_branches + 1)
    st = slab.storage(0, q, q.num_branches)
    with pytest.raises(ValueError):
        Episode(q, np.arange(q.num_branches - 1), storage=st)  # the pool is shorter


# ---- the judge: rows stepped together vs one by one ---------------------------------------------


def _judges(rng: np.random.Generator, seed: int) -> tuple[UnitJudge, UnitJudge]:
    parts = [Questions(random_store(rng, int(rng.integers(2, 8)), f"s{k}")) for k in range(3)]
    budget = None if seed % 3 == 0 else int(rng.integers(20, 400))
    proto = EvalProtocol(draws=2, pool=None if seed % 2 else int(rng.integers(1, 40)),
                         probe_cost=int(rng.choice([0, 2])), budget=budget)
    window = int(rng.integers(2, 6))
    made = []
    trace = seed % 3 == 1  # a traced draw: its episodes log every action
    for together in (True, False):
        j = UnitJudge(parts, proto, 1, trace=trace, budget=TraceBudget(10**6), window=window)
        if not together:
            j.slab, j.tables = None, None  # every episode with arrays of its own
        j.order = list(range(j.n))
        j.start()
        made.append(j)
    return made[0], made[1]


def _round(rng: np.random.Generator, judge: UnitJudge) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    rows, idx, masks = [], [], []
    for slot, s in judge.live.items():
        ep = s.ep
        opened, running = ep.num_opened, ep.running
        r = rng.random()
        if r < 0.6 and opened:
            m = random_mask(rng, ep)
            if rng.random() < 0.05:
                m = np.concatenate([m, [True]])  # a mask of the wrong length: refused
            masks.append(m)
            rows.append([slot, OP_ADVANCE_MANY_MASK, len(m), 2 if rng.random() < 0.05 else 1, 0])
        elif r < 0.7:
            rows.append([slot, OP_BRANCH_MANY, int(rng.integers(0, ep.pool_size - opened + 1)),
                         int(rng.random() < 0.5), 0])
        elif r < 0.75:
            rows.append([slot, OP_READ_NEW, 0, 0, 0])
        elif r < 0.8 and opened:
            masks.append(rng.random(opened) < 0.2)
            rows.append([slot, OP_PRUNE_MANY_MASK, opened, 0, 0])
        elif r < 0.85 and opened:
            live = running.nonzero()[0].astype(np.int32)
            idx.append(live)
            rows.append([slot, OP_ADVANCE_MANY_IDX, len(live), 1, 0])
        elif r < 0.9 and opened:
            rows.append([slot, OP_EXTEND, int(rng.integers(0, opened)), 0, 0])
        elif r < 0.95:
            rows.append([slot, OP_ANSWER, 1, int(rng.integers(0, 4)), 0])
    order = rng.permutation(len(rows))  # the child sends rows in any order
    table = np.array([rows[i] for i in order], dtype=np.int64).reshape(-1, 5)
    # the raw lists in the order of the rows that take them
    by_slot_m = {r[0]: m for r, m in zip([r for r in rows if r[1] in (
        OP_ADVANCE_MANY_MASK, OP_PRUNE_MANY_MASK)], masks, strict=True)}
    by_slot_i = {r[0]: i for r, i in zip([r for r in rows if r[1] == OP_ADVANCE_MANY_IDX], idx,
                                         strict=True)}
    ms = [by_slot_m[r[0]] for r in table.tolist() if r[0] in by_slot_m]
    ix = [by_slot_i[r[0]] for r in table.tolist() if r[0] in by_slot_i]
    return (table, np.concatenate(ix).astype(np.int32) if ix else np.zeros(0, np.int32),
            np.concatenate(ms).astype(bool) if ms else np.zeros(0, bool))


@pytest.mark.parametrize("seed", range(12))
def test_judge_steps_rows_together_as_one_by_one(seed):
    rng = np.random.default_rng(100 + seed)
    together, alone = _judges(rng, seed)
    assert together.slab is not None
    rounds = refused = reused = 0
    rows_seen = set()
    while not together.complete:
        table, idx, masks = _round(rng, together)
        a = together.serve(table, [], [], stop_on_error=False, indices=idx, masks=masks)
        b = alone.serve(table, [], [], stop_on_error=False, indices=idx, masks=masks)
        assert a.rows.tolist() == b.rows.tolist()
        assert a.refusals == b.refusals
        assert [c.tolist() for c in a.reveals] == [c.tolist() for c in b.reveals]
        assert [c.dtype for c in a.reveals] == [c.dtype for c in b.reveals]
        assert (a.answered, a.ended) == (b.answered, b.ended)
        refused += len(a.refusals)
        started = together.start()
        assert started == alone.start()
        for slot in together.live:
            reused += together.live[slot].row in rows_seen and slot in [f[0] for f in started]
        rows_seen.update(s.row for s in together.live.values())
        assert together.live.keys() == alone.live.keys()
        for slot, s in together.live.items():
            assert state(s.ep) == state(alone.live[slot].ep)
        assert together.actions == alone.actions
        rounds += 1
        assert rounds < 2000
    assert refused > 0 and reused > 0  # refusals interleaved, rows given to new episodes
    for k in range(len(together.parts)):
        x, y = together.result(k), alone.result(k)
        for f in ("answers", "tokens", "probes", "opened"):
            assert getattr(x, f).tolist() == getattr(y, f).tolist()
        assert x.traces == y.traces
        assert (x.traces is not None) == (seed % 3 == 1)
        if x.traces:  # the traced rows were stepped together, and logged
            assert any(ev["ev"] == "advance_many" for t in x.traces for ev in t["events"])


def test_a_malformed_stores_questions_keep_the_per_episode_path():
    """A store with classes below -1 (readable, but malformed) numbers ids with another sentinel
    (Question._unseen -1): its questions are not in the step tables, and the judge serves their
    episodes one by one, with arrays of their own."""
    rng = np.random.default_rng(7)
    good = random_store(rng, 2, "good")
    bad = random_store(rng, 2, "bad")
    bad.final_class[0] = -3
    qs = [Question(good, 0), Question(bad, 0), Question(bad, 1)]
    tables = StepTables(qs)
    assert tables.offset(0) == 0 and tables.offset(1) == -1 and tables.offset(2) >= 0
    parts = [Questions(good), Questions(bad)]
    judge = UnitJudge(parts, EvalProtocol(draws=1), 0, trace=False, budget=TraceBudget(10**6))
    judge.order = list(range(judge.n))
    judge.start()
    assert [s.offset >= 0 for s in judge.live.values()] == [True, True, False, True]
    assert [s.row >= 0 for s in judge.live.values()] == [True, True, False, True]
