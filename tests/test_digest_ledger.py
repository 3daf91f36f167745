"""The digest's branch ledger is a replay on the engine (issue 17 item 2): random episodes that use
all 11 actions (refused ones included, which the trace never logs), budgets and κ, on random
questions with L = 0 branches and T < L·Δ ones. The ledger read off the trace must equal the
engine's own state and, per branch, the tokens the reference semantics (tests/semantics_ref.py)
charged to that branch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autotts.discover.digest import ledger
from autotts.engine import Episode, InvalidAction, Question
from tests.semantics_ref import RefEpisode
from tests.test_semantics_fuzz import (
    ACTIONS,
    WEIGHTS,
    call,
    pick_count,
    pick_flag,
    pick_index,
    pick_times,
    pick_which,
    random_question,
)


class SpentRef(RefEpisode):
    """The reference semantics, also keeping the tokens charged to each branch."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.spent: list[int] = []

    def _open(self) -> int:
        i = super()._open()
        self.spent.append(0)
        return i

    def _charge(self, i: int, gen: int, probes: int) -> None:
        self.spent[i] += (self.gen - gen) + self.kappa * (self.probes - probes)

    def _step(self, i: int, probe: bool) -> int | None:
        gen, probes = self.gen, self.probes
        a = super()._step(i, probe)
        self._charge(i, gen, probes)
        return a

    def probe(self, i: Any) -> int:
        gen, probes = self.gen, self.probes
        a = super().probe(i)
        self._charge(int(np.asarray(i)), gen, probes)  # admitted: an integer index
        return a

    def _read_whole(self, i: int) -> int:
        gen, probes = self.gen, self.probes
        a = super()._read_whole(i)
        self._charge(i, gen, probes)
        return a


def random_episode(seed: int) -> tuple[Episode, SpentRef, Question, np.ndarray, int, int | None]:
    rng = np.random.default_rng(seed)
    data, branches, err = random_question(rng)
    q = Question(data, 0)
    m = len(branches)
    order = rng.permutation(m)
    kappa = int(rng.choice([0, 7]))
    budget = None if rng.random() < 0.4 else int(rng.integers(0, 40 * data.delta + 20))
    ep = Episode(q, order, probe_cost=kappa, budget=budget, trace=True)
    ref = SpentRef(branches, order.tolist(), data.delta, kappa, budget, err)
    for _ in range(int(rng.integers(1, 60))):
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
        if rng.random() < 0.2:
            ep.trace("note", tokens=-5, i=99)  # a controller's own event: never an action
        assert call(ref, name, args) == call(ep, name, args)
    return ep, ref, q, order, kappa, budget


@pytest.mark.parametrize("block", range(4))
def test_ledger_is_the_engine(block: int) -> None:
    probed_batches = 0
    for seed in range(block * 100, block * 100 + 100):
        ep, ref, q, order, kappa, budget = random_episode(seed)
        events = ep.trace_events()
        led = ledger(events, q, order, kappa, budget)
        assert led is not None, seed
        assert led["opened"] == ep.num_opened and led["tokens"] == ep.tokens, seed
        assert led["depth"].tolist() == ep.depths.tolist(), seed
        assert led["finished"].tolist() == ep.finished.tolist(), seed
        assert led["pruned"].tolist() == ep.pruned.tolist(), seed
        assert led["spent"].tolist() == ref.spent, seed
        probed_batches += kappa > 0 and any(e["ev"] == "branch_many" for e in events)
    assert probed_batches > 5  # the probe flag, which the trace does not log, was inferred


def test_unresolvable_traces() -> None:
    ep, _, q, order, kappa, budget = random_episode(3)
    events = ep.trace_events()
    assert ledger(events, q, order, kappa, budget) is not None
    acts = [e for e in events if e["ev"] != "note"]
    assert acts
    # A cost that departs from the engine's, an action the engine refuses, a malformed event.
    bad_cost = [dict(e) for e in acts]
    bad_cost[-1]["tokens"] += 1
    assert ledger(bad_cost, q, order, kappa, budget) is None
    refused = [*acts, {"ev": "prune", "i": 10_000, "tokens": ep.tokens}]
    assert ledger(refused, q, order, kappa, budget) is None
    assert ledger([{"ev": "branch_many", "tokens": 1}], q, order, kappa, budget) is None
    # A batch prune that names neither its branches nor how many it pruned.
    first = Episode(q, order, trace=True)
    first.branch()
    first.prune_many([0])
    old_style = [{k: v for k, v in e.items() if k != "idx"} for e in first.trace_events()]
    old_style[-1].pop("n")
    assert ledger(old_style, q, order, 0) is None


def test_refused_actions_are_not_replayed() -> None:
    """A refused action is not logged: the ledger replays only what was admitted, under the same
    budget (an action past it would be refused by the replay too)."""
    data, *_ = random_question(np.random.default_rng(5))
    q = Question(data, 0)
    order = np.arange(q.num_branches)
    ep = Episode(q, order, probe_cost=7, budget=1, trace=True)
    ep.branch(probe=True)
    with pytest.raises(InvalidAction):
        ep.branch()  # the budget is spent
    led = ledger(ep.trace_events(), q, order, 7, 1)
    assert led is not None and led["opened"] == 1 and int(led["spent"].sum()) == ep.tokens
    # The same events with one more admitted-looking BRANCH: the replay's budget refuses it.
    forged = [*ep.trace_events(), {"ev": "branch", "i": 1, "tokens": ep.tokens + data.delta}]
    assert ledger(forged, q, order, 7, 1) is None


def test_digest_helpers_match_their_plain_forms() -> None:
    """The digest's faster helpers say what the plain ones say: _majority is
    summary.majority_first_seen, and _as_mask (cached or not) makes the mask of an increasing
    list of ints and passes anything else on as indices."""
    from itertools import pairwise

    from autotts.discover.digest import _as_mask, _majority
    from autotts.summary import majority_first_seen

    rng = np.random.default_rng(7)
    for _ in range(2000):
        classes = rng.integers(-2, 5, size=int(rng.integers(0, 12)))
        assert _majority(classes.tolist()) == majority_first_seen(classes)
    cache: dict[Any, np.ndarray] = {}
    lists: list[Any] = [[], [0], [0, 2, 3], [3, 2], [1, 1], [-1, 2], [0, True], [True, 2],
                        [0, 2.0], (0, 1), [0, 10**30], "ab", [2**70]]
    for idx in lists:
        plain = (type(idx) is list and (not idx or (type(idx[0]) is int and idx[0] >= 0))
                 and all(type(b) is int and a < b for a, b in pairwise(idx)))
        for c in (None, cache, cache):
            try:
                got = _as_mask(idx, 4, c)
            except (IndexError, TypeError, ValueError, OverflowError) as e:
                got = type(e)
            if plain:
                if idx and max(idx) >= 4:
                    assert got is IndexError
                else:
                    assert got.dtype == bool and got.nonzero()[0].tolist() == idx
            else:
                try:
                    want = np.asarray(idx, dtype=np.int64)
                except (TypeError, ValueError, OverflowError) as e:
                    assert got is type(e)
                else:
                    assert got.dtype == np.int64 and got.tolist() == want.tolist()


def test_digest_key_of_actions_that_do_not_pickle_is_their_repr() -> None:
    from autotts.discover.digest import _actions_key

    plain = [{"ev": "advance", "t": 1, "tokens": 5, "i": 0}]
    assert isinstance(_actions_key(plain), bytes)
    odd = [{"ev": "advance", "t": 1, "tokens": 5, "i": 0, "f": lambda: 0}]
    assert _actions_key(odd) == repr(odd)
