"""The engine's per-call shortcuts reach the same results as the long way round.

Episode takes shortcuts that tests/test_semantics_fuzz.py's small random questions (at most 12
branches, few classes) do not all reach: Python-level checks for a few indices or reveals and
numpy ones for many, one advance_many round vs several, masks vs index arrays, the return value
of a single round. Here wide questions (up to 90 branches, many classes, math stores' -1) run in
lockstep with tests/semantics_ref.py, and equivalent calls are compared with each other."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autotts.engine import Episode, InvalidAction, Question
from autotts.store import ReplayData
from tests.semantics_ref import RefBranch, RefEpisode
from tests.test_semantics_fuzz import call, ref_snapshot, snapshot


def wide_question(rng: np.random.Generator, m: int) -> tuple[ReplayData, list[RefBranch], int]:
    delta = int(rng.choice([1, 10]))
    n_cls = int(rng.integers(2, 120))
    math_like = rng.random() < 0.4
    lo = -1 if math_like else 0
    branches = []
    for _ in range(m):
        n = int(rng.integers(0, 9))
        probes = [int(c) for c in rng.integers(lo, n_cls, size=n)]
        branches.append(RefBranch(probes, int(rng.integers(0, (n + 2) * delta + 1)),
                                  int(rng.integers(lo, n_cls))))
    err = -1 if math_like or rng.random() < 0.5 else int(rng.integers(0, n_cls))
    p_off = np.concatenate([[0], np.cumsum([len(b.probes) for b in branches])]).astype(np.int64)
    data = ReplayData(
        name="wide", delta=delta, branch_offsets=np.array([0, m], dtype=np.int64),
        tokens=np.array([b.tokens for b in branches], dtype=np.int32),
        final_class=np.array([b.final for b in branches], dtype=np.int32),
        probe_offsets=p_off,
        probe_class=np.array([c for b in branches for c in b.probes], dtype=np.int32),
        err_class=np.array([err], dtype=np.int32),
    )
    return data, branches, err


def which_of(rng: np.random.Generator, running: list[bool]) -> Any:
    live = np.flatnonzero(running)
    r = rng.random()
    if r < 0.3:
        return np.array(running, dtype=bool)
    if r < 0.5:
        rng.shuffle(live)
        return live.tolist()
    if r < 0.7:
        return live.astype(np.int32)[rng.permutation(len(live))]
    if r < 0.8 and len(live) > 1:
        return [int(live[0]), *live.tolist()]  # a branch twice: refused
    if r < 0.9:
        return [*live.tolist(), len(running)]  # a branch not open: refused
    return live[: int(rng.integers(0, len(live) + 1))]


@pytest.mark.parametrize("seed", range(12))
def test_wide_episodes_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(30, 91))
    data, branches, err = wide_question(rng, m)
    q = Question(data, 0)
    order = rng.permutation(m)
    budget = None if seed % 3 else int(rng.integers(50, 400 * data.delta))
    ep = Episode(q, order, probe_cost=3, budget=budget, journal=True)
    ref = RefEpisode(branches, order.tolist(), data.delta, 3, budget, err)
    taken = 0
    for step in range(40):
        r = rng.random()
        if step == 0 or (r < 0.1 and ref.opened < m):
            name, args = "branch_many", (int(rng.integers(0, m - ref.opened + 1)), r < 0.07)
        elif r < 0.15 and ref.opened < m:
            name, args = "read_new_many", (int(rng.integers(0, m - ref.opened + 1)),)
        elif r < 0.2 and ref.opened:
            name, args = "prune_many", (which_of(rng, [ref.running(i) for i in range(ref.opened)]),)
        else:
            running = [ref.running(i) for i in range(ref.opened)]
            name = "advance_many"
            args = (which_of(rng, running), int(rng.choice([1, 1, 1, 2, 3, 9])))
        want = call(ref, name, args)
        assert call(ep, name, args) == want, (seed, step, name)
        assert snapshot(ep) == ref_snapshot(ref), (seed, step, name)
        i, d, a, f = ep.take_journal()
        assert (i.dtype, d.dtype, a.dtype, f.dtype) == (np.int64, np.int64, np.int32, bool)
        got = list(zip(i.tolist(), d.tolist(), a.tolist(), f.tolist(), strict=True))
        assert got == ref.journal[taken:], (seed, step, name)
        taken = len(ref.journal)


@pytest.mark.parametrize("seed", range(8))
def test_times_rounds_equal_single_rounds(seed):
    """advance_many(w, times=t) reveals what t calls of advance_many on w's still-running
    branches reveal, in the same order and with the same ids; only the action count differs."""
    rng = np.random.default_rng(100 + seed)
    m = int(rng.integers(5, 70))
    data, _, _ = wide_question(rng, m)
    q = Question(data, 0)
    order = rng.permutation(m)
    one, many = Episode(q, order, journal=True), Episode(q, order, journal=True)
    plain = Episode(q, order)  # no journal: a single round returns its ids as they are
    k = int(rng.integers(1, m + 1))
    for ep in (one, many, plain):
        ep.branch_many(k, probe=bool(seed % 2))
    one.take_journal()
    many.take_journal()
    while one.running.any():
        w = np.flatnonzero(one.running)
        w = w[rng.permutation(len(w))][: int(rng.integers(1, len(w) + 1))]
        t = int(rng.integers(1, 6))
        got = many.advance_many(w.astype(np.int32) if seed % 3 == 0 else w, t)
        assert plain.advance_many(w, t).tolist() == got.tolist()
        j_many = many.take_journal()
        parts = []
        for _ in range(t):
            live = [i for i in w.tolist() if one.running[i]]
            if live:
                one.advance_many(live)
                parts.append(one.take_journal())
        assert got.tolist() == one.latest[w].tolist()
        for a, b in zip(j_many, (np.concatenate(c) for c in zip(*parts, strict=True)),
                        strict=True):
            assert a.tolist() == b.tolist()
        for name in ("latest", "depths", "finished", "running", "tokens", "num_probes"):
            assert np.array_equal(getattr(one, name), getattr(many, name)), name
        assert [one.history(i).tolist() for i in range(k)] == \
            [many.history(i).tolist() for i in range(k)]


@pytest.mark.parametrize("journal", [False, True])
def test_masks_and_index_arrays_do_the_same(journal):
    rng = np.random.default_rng(7)
    data, _, _ = wide_question(rng, 60)
    q = Question(data, 0)
    order = rng.permutation(60)
    eps = [Episode(q, order, journal=journal) for _ in range(4)]
    for ep in eps:
        ep.branch_many(40)
    while eps[0].running.any():
        run = eps[0].running
        outs = [eps[0].advance_many(run), eps[1].advance_many(np.flatnonzero(run)),
                eps[2].advance_many(np.flatnonzero(run).astype(np.uint8)),
                eps[3].advance_many(np.flatnonzero(run).tolist())]
        assert all(o.dtype == np.int32 and o.tolist() == outs[0].tolist() for o in outs)
        for ep in eps[1:]:
            assert ep.latest.tolist() == eps[0].latest.tolist()
        if journal:
            js = [[x.tolist() for x in ep.take_journal()] for ep in eps]
            assert js[0][0] and all(j == js[0] for j in js)


@pytest.mark.parametrize("journal", [False, True])
def test_the_returned_answers_are_the_callers_own(journal):
    """A single round returns its ids without another gather: writing into them changes
    neither the episode's state nor its journal."""
    rng = np.random.default_rng(3)
    data, _, _ = wide_question(rng, 20)
    q = Question(data, 0)
    eps = [Episode(q, np.arange(20), journal=journal) for _ in range(2)]
    for ep in eps:
        ep.branch_many(20, probe=True)
    while eps[0].running.any():
        outs = [ep.advance_many(ep.running) for ep in eps]
        assert outs[0].tolist() == outs[1].tolist()
        outs[0][:] = -7
        assert eps[0].latest.tolist() == eps[1].latest.tolist()
        if journal:
            a, b = ([x.tolist() for x in ep.take_journal()] for ep in eps)
            assert a == b


def _outcome(ep: Episode, which: Any) -> tuple[str, Any]:
    try:
        out = ep.advance_many(which)
    except InvalidAction as e:
        return "refused", str(e)
    return "ok", (out.dtype.str, out.tolist())


@pytest.mark.parametrize("seed", range(10))
def test_a_running_mask_takes_the_general_paths_steps(seed):
    """advance_many(mask) with a bool ndarray of one entry per opened branch and times 1 (the
    usual call, which has a path of its own) does what the same mask given as a list takes the
    general path to do: the same refusals word for word (a mask naming a pruned or finished
    branch, the budget, an ended episode), return value, state, journal and trace."""
    rng = np.random.default_rng(500 + seed)
    m = int(rng.integers(20, 80))
    data, _, _ = wide_question(rng, m)
    q = Question(data, 0)
    order = rng.permutation(m)
    budget = None if seed % 2 else int(rng.integers(50, 300 * data.delta))
    journal, trace = seed % 3 != 1, seed % 4 == 0
    fast, slow = (Episode(q, order, probe_cost=2, budget=budget, journal=journal, trace=trace)
                  for _ in range(2))
    for step in range(60):
        if step % 9 == 0 and fast.num_opened < m:
            k = int(rng.integers(1, m - fast.num_opened + 1))
            assert call(fast, "branch_many", (k, step % 2 == 0)) == \
                call(slow, "branch_many", (k, step % 2 == 0))
        elif step % 7 == 3 and fast.num_opened:
            i = int(rng.integers(0, fast.num_opened))
            assert call(fast, "prune", (i,)) == call(slow, "prune", (i,))
        if step == 55:
            fast.close()
            slow.close()
        mask = fast.running
        if rng.random() < 0.25 and len(mask):  # a branch that cannot be stepped: refused
            mask[int(rng.integers(0, len(mask)))] = True
        elif rng.random() < 0.2:
            mask &= rng.random(len(mask)) < 0.5
        assert _outcome(fast, mask) == _outcome(slow, mask.tolist()), (seed, step)
        if step >= 55:
            continue  # ended: refused, and its views of the question are gone
        assert snapshot(fast) == snapshot(slow), (seed, step)
        if journal:
            assert [x.tolist() for x in fast.take_journal()] == \
                [x.tolist() for x in slow.take_journal()], (seed, step)
        assert fast.trace_events() == slow.trace_events()
