"""Differential fuzz of the engine against tests/semantics_ref.py, a separate plain implementation of
docs/semantics.md: random stores (with L = 0 branches and T <= L·Δ ones), κ, budgets, draws that
use part of the pool, and random controllers that use all 11 actions, masks, and wrong arguments.
After every action the two agree on the outcome (refused or the same return value) and on the
whole revealed state, the reveal journal and the id -> store class map. Traced, untraced and
journaled episodes run in lockstep, so tracing provably changes nothing.

Fast by default; AUTOTTS_FUZZ_EPISODES or the slow marker run many more episodes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from autotts.engine import Episode, InvalidAction, Question, store_class
from autotts.store import ReplayData
from tests.semantics_ref import RefBranch, RefEpisode, Refused

ACTIONS = ("branch", "branch_many", "extend", "probe", "advance", "advance_many", "read",
           "read_new", "read_new_many", "prune", "prune_many")
WEIGHTS = np.array([2, 1, 2, 2, 3, 2, 1, 1, 1, 0.7, 0.5]) / 16.2


def random_question(rng: np.random.Generator) -> tuple[ReplayData, list[RefBranch], int]:
    """One question: M branches with L in 0..6 probes, T anywhere from 0 to past L·Δ, classes in
    a small range (so answers repeat), some -1 (math stores' "no answer"), maybe an ERR class."""
    delta = int(rng.choice([1, 5, 10]))
    m = int(rng.integers(1, 13))
    n_cls = int(rng.integers(1, 6))
    math_like = rng.random() < 0.3
    branches = []
    for _ in range(m):
        n = int(rng.choice([0, 0, 1, 2, 3, 6, 9]))
        lo = -1 if math_like else 0
        probes = [int(c) for c in rng.integers(lo, n_cls, size=n)]
        t = int(rng.integers(0, (n + 2) * delta + 1))  # T < L·Δ, = L·Δ and beyond all occur
        branches.append(RefBranch(probes, t, int(rng.integers(lo, n_cls))))
    err = -1 if math_like or rng.random() < 0.4 else int(rng.integers(0, n_cls))
    p_off = np.concatenate([[0], np.cumsum([len(b.probes) for b in branches])]).astype(np.int64)
    data = ReplayData(
        name="fuzz", delta=delta,
        branch_offsets=np.array([0, m], dtype=np.int64),
        tokens=np.array([b.tokens for b in branches], dtype=np.int32),
        final_class=np.array([b.final for b in branches], dtype=np.int32),
        probe_offsets=p_off,
        probe_class=np.array([c for b in branches for c in b.probes], dtype=np.int32),
        err_class=np.array([err], dtype=np.int32),
    )
    return data, branches, err


BAD_INDEX = (1.0, True, "0", None, np.array([0, 1]), 2**70, np.float64(0.0))
BAD_COUNT = (1.0, True, -1, "2", np.array([1, 2]), None)
BAD_FLAG = (1, 0, "yes", None, np.array([True]))


def pick_index(rng: np.random.Generator, ref: RefEpisode) -> Any:
    r = rng.random()
    if r < 0.08:
        return BAD_INDEX[int(rng.integers(len(BAD_INDEX)))]
    if r < 0.12 or ref.opened == 0:
        return int(rng.choice([-1, ref.opened, ref.opened + 3]))
    running = [j for j in range(ref.opened) if ref.running(j)]
    j = int(rng.choice(running)) if running and rng.random() < 0.9 else int(
        rng.integers(ref.opened))
    return [j, np.int64(j), np.array(j), np.int32(j)][int(rng.integers(4)) if r > 0.9 else 0]


def pick_which(rng: np.random.Generator, ref: RefEpisode) -> Any:
    n = ref.opened
    running = np.array([ref.running(j) for j in range(n)], dtype=bool)
    r = rng.random()
    if r < 0.3:
        return running.copy()  # the usual mask
    if r < 0.45:
        live = np.flatnonzero(running)
        rng.shuffle(live)  # order matters: reveals are numbered in the order listed
        return live.tolist() if rng.random() < 0.5 else live
    if r < 0.55:
        return [bool(x) for x in rng.random(n) < 0.5]  # a bool list is a mask too
    if r < 0.65:
        k = int(rng.integers(0, n + 1))
        return rng.choice(max(n, 1), size=min(k, max(n, 1)), replace=False).tolist() if n else []
    if r < 0.72:
        return pick_index(rng, ref)  # one index
    if r < 0.78:
        return []
    bad: list[Any] = [[0, 0], [0.0], np.ones(n + 1, dtype=bool), "x", None, True, [[0]],
                      [n], [-1], np.zeros((1, 1), dtype=np.int64)]
    return bad[int(rng.integers(len(bad)))]


def pick_count(rng: np.random.Generator, ref: RefEpisode) -> Any:
    if rng.random() < 0.1:
        return BAD_COUNT[int(rng.integers(len(BAD_COUNT)))]
    left = len(ref.pool) - ref.opened
    return int(rng.integers(0, left + 2))


def pick_times(rng: np.random.Generator) -> Any:
    r = rng.random()
    if r < 0.1:
        return [0, 1.0, True, 2.0, np.array([1, 2]), "1", None][int(rng.integers(7))]
    if r < 0.15:
        return [np.int32(2), np.array(3), 10**30][int(rng.integers(3))]
    return int(rng.integers(1, 5))


def pick_flag(rng: np.random.Generator) -> Any:
    r = rng.random()
    if r < 0.08:
        return BAD_FLAG[int(rng.integers(len(BAD_FLAG)))]
    return bool(r < 0.6) if r < 0.95 else np.bool_(True)


def call(obj: Any, name: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        out = getattr(obj, name)(*args)
    except (InvalidAction, Refused):
        return "refused", None
    if isinstance(out, np.ndarray):
        out = out.tolist()
    return "ok", out


def snapshot(ep: Episode) -> dict[str, Any]:
    n = ep.num_opened
    return {
        "tokens": ep.tokens, "generated": ep.generated_tokens, "probes": ep.num_probes,
        "actions": ep.num_actions, "opened": n, "remaining": ep.remaining_budget,
        "depths": ep.depths.tolist(), "finished": ep.finished.tolist(),
        "pruned": ep.pruned.tolist(), "running": ep.running.tolist(),
        "latest": ep.latest.tolist(), "final_answers": ep.final_answers.tolist(),
        "history": [ep.history(i).tolist() for i in range(n)],
        "history_depths": [ep.history_depths(i).tolist() for i in range(n)],
        "scalars": [(ep.depth(i), ep.is_finished(i), ep.is_pruned(i), ep.latest_answer(i))
                    for i in range(n)],
    }


def ref_snapshot(ref: RefEpisode) -> dict[str, Any]:
    n = ref.opened
    finals = [a if f else -1 for a, f in zip(ref.latest, ref.finished, strict=True)]
    return {
        "tokens": ref.tokens, "generated": ref.gen, "probes": ref.probes,
        "actions": ref.actions, "opened": n,
        "remaining": None if ref.budget is None else ref.budget - ref.tokens,
        "depths": list(ref.depth), "finished": list(ref.finished), "pruned": list(ref.pruned),
        "running": [ref.running(i) for i in range(n)], "latest": list(ref.latest),
        "final_answers": finals,
        "history": [ref.history(i) for i in range(n)],
        "history_depths": [sorted(ref.revealed[i]) for i in range(n)],
        "scalars": [(ref.depth[i], ref.finished[i], ref.pruned[i], ref.latest[i])
                    for i in range(n)],
    }


def run_episode(seed: int) -> int:
    """One random episode in lockstep on the reference and three engine handles; the number of
    actions tried."""
    rng = np.random.default_rng(seed)
    data, branches, err = random_question(rng)
    q = Question(data, 0)
    m = len(branches)
    order = rng.permutation(m)[: int(rng.integers(1, m + 1))] if rng.random() < 0.3 else \
        rng.permutation(m)
    kappa = int(rng.choice([0, 7]))
    budget = None if rng.random() < 0.4 else int(rng.integers(0, 40 * data.delta + 20))
    kw = {"probe_cost": kappa, "budget": budget}
    plain = Episode(q, order, **kw)
    traced = Episode(q, order, trace=True, **kw)
    journaled = Episode(q, order, trace=True, journal=True, **kw)
    ref = RefEpisode(branches, order.tolist(), data.delta, kappa, budget, err)
    taken = 0
    n_steps = int(rng.integers(1, 60))
    for _ in range(n_steps):
        name = ACTIONS[int(rng.choice(len(ACTIONS), p=WEIGHTS))]
        if name in ("extend", "probe", "advance", "read", "prune"):
            args: tuple[Any, ...] = (pick_index(rng, ref),)
        elif name in ("branch_many", "read_new_many"):
            args = (pick_count(rng, ref),)
            if name == "branch_many" and rng.random() < 0.7:
                args += (pick_flag(rng),)
        elif name == "branch":
            args = (pick_flag(rng),) if rng.random() < 0.8 else ()
        elif name == "advance_many":
            args = (pick_which(rng, ref),) + ((pick_times(rng),) if rng.random() < 0.7 else ())
        elif name == "prune_many":
            args = (pick_which(rng, ref),)
        else:
            args = ()
        want = call(ref, name, args)
        for ep in (plain, traced, journaled):
            got = call(ep, name, args)
            assert got == want, (seed, name, args, got, want)
        snap = ref_snapshot(ref)
        for ep in (plain, traced, journaled):
            assert snapshot(ep) == snap, (seed, name, args)
        i, d, a, f = journaled.take_journal()
        got_j = list(zip(i.tolist(), d.tolist(), a.tolist(), f.tolist(), strict=True))
        assert got_j == ref.journal[taken:], (seed, name, args)
        taken = len(ref.journal)
        for x in range(-1, len(ref.inv) + 2):
            assert store_class(plain, x) == ref.store_class(x), (seed, x)
    # Ids carry nothing but reveal order: they are 1, 2, ... in order of first appearance, plus 0.
    firsts: list[int] = []
    for _, _, a, _ in ref.journal:
        if a > 0 and a not in firsts:
            firsts.append(a)
    assert firsts == list(range(1, len(firsts) + 1))
    assert traced.trace_events() == journaled.trace_events()
    return n_steps


def _episodes(default: int) -> int:
    return int(os.environ.get("AUTOTTS_FUZZ_EPISODES", default))


def test_engine_matches_the_reference_semantics():
    total = sum(run_episode(seed) for seed in range(_episodes(150)))
    assert total > 1000


@pytest.mark.slow
def test_engine_matches_the_reference_semantics_long():
    for seed in range(10_000, 10_000 + _episodes(5_000)):
        run_episode(seed)
