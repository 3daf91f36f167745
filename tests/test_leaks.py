"""No channel carries a hidden quantity (DESIGN §3, issue 20), tested as non-interference.

Run a random controller on question A and record everything it can observe: every return value,
every refusal and its message, every counter and view after every action, its trace, and for the
Gymnasium env the observations, rewards, flags and `info`. Then build question B from A by changing
everything that run did not reveal: the store's class numbering (a permutation, gold permuted
alike), unrevealed probes, the finals, T_b and L_b of unfinished branches, and every unopened
branch. A controller sees only what it revealed, so on B, acting on the same observations, it must
see exactly the same transcript. Any channel that depends on a hidden value (a store-order class
id, a refusal that says whether a hidden cost fits, a message quoting it, a counter that counts
such refusals) makes the transcripts differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autotts.engine import Episode, InvalidAction, Question
from autotts.gym_env import WidthDepthEnv
from autotts.store import ReplayData
from tests.conftest import branch, make_store
from tests.semantics_ref import RefBranch
from tests.test_semantics_fuzz import (
    ACTIONS,
    WEIGHTS,
    pick_count,
    pick_flag,
    pick_index,
    pick_times,
    pick_which,
    random_question,
    snapshot,
)


class View:
    """What the fuzz's argument pickers read, taken from the public API only."""

    def __init__(self, ep: Episode) -> None:
        self.opened = ep.num_opened
        self._running = ep.running.tolist()
        self.pool = range(ep.pool_size)

    def running(self, j: int) -> bool:
        return bool(self._running[j])


def to_data(branches: list[RefBranch], err: int, delta: int) -> ReplayData:
    p_off = np.concatenate([[0], np.cumsum([len(b.probes) for b in branches])]).astype(np.int64)
    return ReplayData(
        name="leak", delta=delta,
        branch_offsets=np.array([0, len(branches)], dtype=np.int64),
        tokens=np.array([b.tokens for b in branches], dtype=np.int32),
        final_class=np.array([b.final for b in branches], dtype=np.int32),
        probe_offsets=p_off,
        probe_class=np.array([c for b in branches for c in b.probes], dtype=np.int32),
        err_class=np.array([err], dtype=np.int32),
    )


def transcript(q: Question, order: np.ndarray, kw: dict[str, Any], seed: int) -> tuple[list, Episode]:
    """A random controller whose choices depend only on its seed and what it observed."""
    rng = np.random.default_rng(seed)
    ep = Episode(q, order, trace=True, **kw)
    out: list[Any] = [("facts", ep.pool_size, ep.delta, ep.probe_cost, ep.no_answer_class,
                       ep.budget)]
    for _ in range(int(rng.integers(5, 50))):
        view = View(ep)
        name = ACTIONS[int(rng.choice(len(ACTIONS), p=WEIGHTS))]
        if name in ("extend", "probe", "advance", "read", "prune"):
            args: tuple[Any, ...] = (pick_index(rng, view),)
        elif name in ("branch_many", "read_new_many"):
            args = (pick_count(rng, view),)
        elif name == "branch":
            args = (pick_flag(rng),)
        elif name == "advance_many":
            args = (pick_which(rng, view), pick_times(rng))
        elif name == "prune_many":
            args = (pick_which(rng, view),)
        else:
            args = ()
        try:
            res = getattr(ep, name)(*args)
            res = res.tolist() if isinstance(res, np.ndarray) else res
        except InvalidAction as e:
            res = ("refused", str(e))
        if rng.random() < 0.2:
            ep.trace("note", n=ep.num_actions, tokens=ep.tokens)
        out.append((name, res, snapshot(ep)))
    out.append(("trace", ep.trace_events()))
    return out, ep


def hide_differently(rng: np.random.Generator, branches: list[RefBranch], err: int,
                     order: np.ndarray, ep: Episode, n_cls: int) -> tuple[list[RefBranch], int,
                                                                          np.ndarray]:
    """B: the same revealed facts as the run on A, everything else changed. Returns B's branches,
    its ERR class and the class permutation."""
    perm = rng.permutation(n_cls + 3)  # room for fresh classes

    def p(c: int) -> int:
        return int(perm[c]) if c >= 0 else -1

    def fresh(lo: int = -1) -> int:
        return p(int(rng.integers(lo, n_cls + 3)))

    out = [RefBranch([fresh() for _ in range(int(rng.integers(0, 7)))],
                     int(rng.integers(0, 80)), fresh()) for _ in branches]
    for i in range(ep.num_opened):
        b = int(order[i])
        src = branches[b]
        seen = set(ep.history_depths(i).tolist())
        d = ep.depth(i)
        if ep.is_finished(i):
            probes = [p(c) if k + 1 in seen else fresh() for k, c in enumerate(src.probes)]
            out[b] = RefBranch(probes, src.tokens, p(src.final))
        else:  # d <= L: keep the d intervals seen so far, change what lies beyond
            n = d + int(rng.integers(0, 5))
            probes = [p(src.probes[k]) if k + 1 in seen else fresh() for k in range(d)]
            probes += [fresh() for _ in range(n - d)]
            out[b] = RefBranch(probes, int(rng.integers(0, 80)), fresh())
    return out, p(err), perm


def _case(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data, branches, err = random_question(rng)
    n_cls = int(max([c for b in branches for c in [*b.probes, b.final]] + [err, 0])) + 1
    order = rng.permutation(len(branches))
    kw = {"probe_cost": int(rng.choice([0, 7])),
          "budget": None if rng.random() < 0.3 else int(rng.integers(0, 30 * data.delta + 20))}
    seen_a, ep = transcript(Question(data, 0), order, kw, seed)
    b_branches, b_err, _ = hide_differently(rng, branches, err, order, ep, n_cls)
    seen_b, _ = transcript(Question(to_data(b_branches, b_err, data.delta), 0), order, kw, seed)
    for k, (a, b) in enumerate(zip(seen_a, seen_b, strict=True)):
        assert a == b, f"seed {seed}, step {k}: {a} != {b}"


def test_nothing_observable_depends_on_what_was_not_revealed():
    for seed in range(200):
        _case(seed)


@pytest.mark.slow
def test_nothing_observable_depends_on_what_was_not_revealed_long():
    for seed in range(200, 3_000):
        _case(seed)


def test_the_issue_examples_are_closed():
    """Issue 20's examples: `read_new()` under budget 2000 was refused with "over budget: 2893 >
    2000 tokens", the T_b of an unopened branch; stepping a branch until refused told its L_b and
    T_b before it ended. Now the refusal and its message depend on the cost so far only."""
    messages = []
    for tokens, probes in ((2893, ["1", "2", "3"]), (99_999, ["1", "2", "3", "4", "5", "6"])):
        store = make_store([("7", [branch(probes, tokens, "7"), branch(["4"], 600, "9")])],
                           delta=500)
        q = Question(store.replay(), 0)
        ep = Episode(q, np.array([1, 0]), budget=1200)
        ep.branch(probe=True)  # branch 1, 500 tokens
        ep.read_new()  # admitted at 500 < 1200, charged in full
        assert ep.tokens == 500 + tokens
        with pytest.raises(InvalidAction) as e:
            ep.read_new()
        assert f"{500 + tokens} tokens so far, budget 1200" in str(e.value)  # revealed figures
        ep = Episode(q, np.array([0, 1]), budget=1200)
        ep.branch(probe=True)
        steps = 0
        while True:
            try:
                ep.advance(0)
                steps += 1
            except InvalidAction as e:
                messages.append((steps, ep.tokens, ep.num_actions, str(e)))
                break
    assert messages[0] == messages[1] == (2, 1500, 3, "the budget is spent (1500 tokens so far, "
                                          "budget 1200): only ANSWER remains")


# ---- the Gymnasium env ----------------------------------------------------------------------


GYM_STORE = make_store([("1", [branch(["1", "2"], 25, "1"), branch(["2"], 5, "2")]),
                        ("2", [branch([], 5, "2"), branch(["3", "3", "3"], 40, "3")])])


def gym_transcript(q: Question, gold: int, order: np.ndarray, seed: int,
                   budget: int | None) -> tuple[list[Any], Episode]:
    env = WidthDepthEnv(GYM_STORE, branch_cap=4, budget=budget, probe_cost=3,
                        invalid_penalty=0.5)
    env._questions = [q]  # the env under test, on a hand-built question (and its gold)
    env._gold = np.array([gold], dtype=np.int32)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(options={"question": 0, "draw": 0})
    env._ep = Episode(q, order, probe_cost=3, budget=budget)  # A's and B's draw order alike
    out: list[Any] = []
    for _ in range(60):
        mask = env.action_masks()
        a = int(rng.integers(env.action_space.n)) if rng.random() < 0.3 else int(
            rng.choice(np.flatnonzero(mask)))
        if a == 0 and rng.random() < 0.8:
            continue
        obs, r, term, trunc, info = env.step(a)
        out.append((a, {k: v.tolist() for k, v in obs.items()}, r, term, trunc,
                    {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in info.items()}))
        if term or trunc:
            break
    return out, env._ep


def test_gym_env_shows_nothing_hidden():
    for seed in range(150):
        rng = np.random.default_rng(seed)
        data, branches, err = random_question(rng)
        n_cls = int(max([c for b in branches for c in [*b.probes, b.final]] + [err, 0])) + 1
        gold = int(rng.integers(0, n_cls))
        order = rng.permutation(len(branches))
        budget = None if seed % 3 == 0 else int(rng.integers(0, 30 * data.delta + 20))
        qa = Question(data, 0)
        a, ep = gym_transcript(qa, gold, order, seed, budget)
        b_branches, b_err, perm = hide_differently(rng, branches, err, order, ep, n_cls)
        qb = Question(to_data(b_branches, b_err, data.delta), 0)
        b, _ = gym_transcript(qb, int(perm[gold]), order, seed, budget)
        assert a == b, seed
