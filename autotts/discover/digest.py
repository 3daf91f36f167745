"""Trace digests: what a candidate did, condensed into facts the agent can act on (DESIGN §8).

Computed in the parent, which is trusted and holds the search stores with their gold answers; the
candidate never sees any of this. Two sources:

* episode rows of the full β sweep (every draw): the answer, its cost and how many branches were
  opened. Against the store's data this gives, per store, the share of episodes answered wrongly
  although the *opened branches*, run to their end, would have voted right ("the information was
  within reach"), and although the *whole pool* would have (more width would help), plus the
  questions never answered right at any β.
* execution traces of a few draws (`trace_draws`) of the same sweep: the stop reasons the
  controller gave (`ep.trace("stop", reason=...)`), and, by replaying the logged actions on a fresh
  episode (a *ledger*), the tokens spent on branches that were later pruned, the wrong answers
  that running the surviving branches to their end would have fixed (stopped too early), and
  those where pruning threw the right majority away.

The ledger has no replay rules of its own: the engine is the one place the semantics live
(docs/design.md). The trace holds every admitted action (a refused one changes nothing and is not
logged) with the cost after it, so the same actions on an `Episode` of the same question, draw
order, probe cost and budget pass through the same states; the replay checks its cost against
each logged `tokens`, and an episode whose events do not replay (a batch that does not name its
branches, an event the engine refuses, a cost that departs) counts as unresolved and is left out
of the ledger figures (the digest says on how many episodes they rest). Per-branch spent tokens
follow from the replayed episode's public state and the cost of each branch alone, read off scratch
episodes of the same draw (`_AloneCosts`).

The trace-level part dominates the cost (each traced episode's actions go through the engine
again): `make_digest` hands a share of the traced episodes, whole (store, question, draw) groups
so that equal action sequences still replay once, to a fork of the calling process (which has
everything already: nothing is sent to it but the results back), while it works out the
episode-level figures and then its own share. Any failure of the fork leaves everything to the
caller, which then computes it as one process does: the digest, or the error, is the same
either way (tests/test_digest_pinned.py, tests/test_digest_split.py).

"Majority" is always the published rule: the most frequent answer class >= 0, ties to the answer
seen first; an episode with no majority (no answer at all) is wrong.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
import pickle
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from itertools import compress, islice
from typing import Any

import numpy as np

from autotts.draws import draw_order
from autotts.engine import NO_ANSWER, Episode, InvalidAction, Question
from autotts.evaluate import EvalProtocol
from autotts.metrics import monotonicity_violations
from autotts.store import Store

ACTIONS = frozenset({
    "branch", "branch_many", "extend", "probe", "advance", "advance_many", "read", "read_new",
    "read_new_many", "prune", "prune_many",
})
TOP = 5  # questions listed per figure
RESOLVED_ENOUGH = 0.9  # share of traced episodes the ledger must replay to report its figures


class SearchData:
    """The search stores as the parent sees them: replay arrays, gold classes, draw orders and, per
    (store, draw, question), whether the majority of the first k branches of the order is right."""

    def __init__(self, stores: Sequence[Store], proto: EvalProtocol) -> None:
        self.stores = list(stores)
        self.proto = proto
        self.names = [s.name for s in self.stores]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.data = [s.replay() for s in self.stores]
        self.gold = [s.gold_classes() for s in self.stores]
        self._questions: dict[tuple[int, int], Question] = {}
        self._prefix: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._alone: dict[tuple[int, int, int], _AloneCosts] = {}

    def alone(self, s: int, draw: int, q: int) -> _AloneCosts:
        """The branches' costs alone in one draw of a question: the same for every β and every
        controller, so computed once per (store, draw, question) and extended as asked."""
        key = (s, draw, q)
        hit = self._alone.get(key)
        if hit is None:
            hit = self._alone[key] = _AloneCosts(self.question(s, q), self.order(s, draw, q))
        return hit

    def question(self, s: int, q: int) -> Question:
        key = (s, q)
        if key not in self._questions:
            self._questions[key] = Question(self.data[s], q)
        return self._questions[key]

    def order(self, s: int, draw: int, q: int) -> np.ndarray:
        m = self.data[s].num_branches(q)
        p = self.proto
        return draw_order(p.protocol, draw, q, m, seed=p.seed, n=p.pool)

    def finals(self, s: int, q: int) -> np.ndarray:
        d = self.data[s]
        return d.final_class[d.branch_offsets[q]: d.branch_offsets[q + 1]]

    def prefix_right(self, s: int, draw: int, q: int) -> np.ndarray:
        """right[k] = the majority of the finals of the order's first k branches is gold."""
        if 0 <= q < self.data[s].num_questions and draw >= 0:
            table, lens = self.prefix_table(s, draw)
            return table[q, : lens[q] + 1]
        # Out of range (a malformed episode row): what it always did, one branch at a time.
        finals = self.finals(s, q)[self.order(s, draw, q)].tolist()
        return np.array(_plain_prefix_right(finals, int(self.gold[s][q])), dtype=bool)

    def prefix_table(self, s: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
        """prefix_right of every question of a draw at once: a table right[q, k] (read-only;
        read k up to the order's length only) and each order's length."""
        return self.prefix_tables(s, [draw])[0]

    def prefix_tables(self, s: int, draws: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """prefix_table of each of the draws, those not made yet made together (one numpy pass
        for them all rather than one per draw)."""
        todo = [d for d in dict.fromkeys(draws) if (s, d) not in self._prefix]
        if todo:
            nq = self.data[s].num_questions
            seqs = [self.finals(s, q)[self.order(s, d, q)] for d in todo for q in range(nq)]
            right, lens = _prefix_majority_right(seqs, np.tile(self.gold[s][:nq], len(todo)))
            for j, d in enumerate(todo):
                self._prefix[(s, d)] = (right[j * nq:(j + 1) * nq], lens[j * nq:(j + 1) * nq])
        return [self._prefix[(s, d)] for d in draws]


def _plain_prefix_right(finals: list[int], gold: int) -> list[bool]:
    """The definition of SearchData.prefix_right, one branch at a time."""
    right = [False] * (len(finals) + 1)
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    leader, lead_n = NO_ANSWER, 0
    for k, a in enumerate(finals, 1):
        if a >= 0:
            c = counts.get(a, 0) + 1
            counts[a] = c
            first.setdefault(a, k)
            if c > lead_n or (c == lead_n and first[a] < first[leader]):
                leader, lead_n = a, c
        right[k] = leader == gold
    return right


def _prefix_majority_right(seqs: list[np.ndarray], gold: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For each row r, right[r, k] = (the majority of seqs[r][:k] == gold[r]): the published
    rule (the most frequent class >= 0, ties to the class seen first; none while no class >= 0
    has been seen, and right[r, 0] is False), for all rows and k at once; k past a row's
    length is not to be read. Returns (right, lengths).

    The leader after k items is the class of greatest count, ties to the smallest first-seen
    position. The greatest count only grows; where it grows (at item j) the item's class alone
    holds it, and until it grows again each item whose class reaches it joins the tied classes:
    so the leader's first-seen position is a running minimum that restarts where the greatest
    count grows (a segmented minimum, done as one running minimum with each segment offset
    below the ones before it)."""
    rows = len(seqs)
    lens = np.array([len(x) for x in seqs], dtype=np.int64)
    m = int(lens.max()) if rows else 0
    right = np.zeros((rows, m + 1), dtype=bool)
    if rows and m:
        f = np.full((rows, m), -1, dtype=np.int64)
        f[np.arange(m) < lens[:, None]] = np.concatenate(seqs)
        flat = f.reshape(-1)
        at = np.flatnonzero(flat >= 0)  # the items that are answers, row-major: row, then k
        count = np.zeros(rows * m, dtype=np.int64)
        first = np.full(rows * m, m, dtype=np.int64)  # m: no answer here
        if len(at):
            cls = flat[at]
            key = (at // m) * (int(cls.max()) + 1) + cls  # (row, class), in item order
            srt = np.argsort(key, kind="stable")
            k_sorted = key[srt]
            n = len(srt)
            head = np.ones(n, dtype=bool)
            head[1:] = k_sorted[1:] != k_sorted[:-1]
            head_at = np.maximum.accumulate(np.where(head, np.arange(n), 0))
            count[at[srt]] = np.arange(n) - head_at + 1  # the class's count after this item
            first[at[srt]] = at[srt][head_at] % m  # where the class was first seen
        count = count.reshape(rows, m)
        first = first.reshape(rows, m)
        top = np.maximum.accumulate(count, axis=1)
        grew = np.empty((rows, m), dtype=bool)
        grew[:, 0] = count[:, 0] > 0
        grew[:, 1:] = top[:, 1:] > top[:, :-1]
        seg = np.cumsum(grew, axis=1)
        cand = np.where((count == top) & (count > 0), first, m)
        offset = (m + 1) * (m + 1 - seg)  # later segments lower: their entries win
        lead_pos = np.minimum.accumulate(cand + offset, axis=1) - offset
        lead = np.take_along_axis(f, np.minimum(lead_pos, m - 1), axis=1)
        g = np.asarray(gold, dtype=np.int64)[:rows, None]
        right[:, 1:] = np.where(top > 0, lead == g, g == NO_ANSWER)
    right.flags.writeable = False
    return right, lens


# ---- the ledger -------------------------------------------------------------------------------


class _Unresolved(Exception):
    pass


def ledger(events: list[dict[str, Any]], question: Question, order: np.ndarray,
           probe_cost: int, budget: int | None = None, alone: _AloneCosts | None = None,
           masks: dict[tuple[tuple[int, ...], int], np.ndarray] | None = None
           ) -> dict[str, Any] | None:
    """The branch ledger of a traced episode: per opened branch its tokens, depth, and whether it
    finished or was pruned. The logged actions are replayed on a fresh `Episode` of the same
    question, draw order, probe cost and budget, so depths and flags are the engine's own. None
    when the events do not determine the actions (a batch without indices, an action the engine
    refuses) or the replay's cost departs from the logged `tokens`. `alone`: the draw's
    `_AloneCosts` (of this question and order), to share between the episodes of one draw."""
    try:
        return _replay(events, question, order, probe_cost, budget,
                       alone or _AloneCosts(question, order), {} if masks is None else masks)
    except (_Unresolved, InvalidAction, IndexError, KeyError, TypeError, ValueError,
            OverflowError):  # (an index past int64 in a forged event's list)
        return None


class _AloneCosts:
    """What each branch of the draw costs run on its own, read off scratch episodes of the same
    question and order (probe cost 0, no budget), opened lazily up to the branch asked about:
    its first step, whether that step finished it, and its whole generation stepped (BRANCH then
    READ) or read whole (READ_NEW, T_b tokens; the two differ where T_b < L_b·Δ).

    Public API only, but a workaround: two engine facts would make it unnecessary, namely the
    `probe` flag in BRANCH / BRANCH×k trace events (inferred here from the cost) and each branch's
    spent tokens kept by the episode for trusted readers (derived here)."""

    def __init__(self, question: Question, order: np.ndarray) -> None:
        self._stepped = Episode(question, order)
        self._whole = Episode(question, order)
        self.first: list[int] = []
        self.done_first: list[bool] = []
        self.stepped: list[int] = []
        self.whole: list[int] = []

    def upto(self, j: int) -> None:
        ep = self._stepped
        while len(self.first) <= j:
            t0 = ep.tokens
            i = ep.branch()
            self.first.append(ep.tokens - t0)
            done = ep.is_finished(i)
            self.done_first.append(done)
            if not done:
                ep.read(i)
            self.stepped.append(ep.tokens - t0)

    def whole_upto(self, j: int) -> None:
        ep = self._whole
        while len(self.whole) <= j:
            t0 = ep.tokens
            ep.read_new()
            self.whole.append(ep.tokens - t0)


def _replay(events: list[dict[str, Any]], question: Question, order: np.ndarray, kappa: int,
            budget: int | None, alone: _AloneCosts,
            masks: dict[tuple[tuple[int, ...], int], np.ndarray]) -> dict[str, Any]:
    ep = Episode(question, order, probe_cost=kappa, budget=budget)
    read_whole: set[int] = set()  # branches opened by READ_NEW: they cost T_b
    prev = 0
    for e in events:
        ev = e.get("ev")
        if ev not in ACTIONS or "tokens" not in e:
            continue  # the controller's own trace event
        tokens = int(e["tokens"])
        delta = tokens - prev
        i = int(e.get("i", -1))
        if ev == "advance_many":  # the usual event: tested first
            if "idx" in e:
                idx = e["idx"]
                which = _as_mask(idx, ep.num_opened, masks)
                n = len(idx)
            else:
                which = ep.running
                n = int(np.count_nonzero(which))
            if n != int(e.get("n", n)):
                raise _Unresolved
            ep.advance_many(which, int(e.get("times", 1)))
        elif ev in ("branch", "branch_many"):
            # The trace does not log `probe`; the cost tells: κ per branch its first step left
            # unfinished (κ = 0 leaves it open, and then nothing later depends on it).
            k = 1 if ev == "branch" else int(e["k"])
            if i != ep.num_opened:
                raise _Unresolved
            probe = False
            if kappa and k:
                alone.upto(i + k - 1)
                plain = sum(alone.first[i:i + k])
                live = k - sum(alone.done_first[i:i + k])
                probe = bool(live) and delta == plain + kappa * live
            if ev == "branch":
                ep.branch(probe=probe)
            else:
                ep.branch_many(k, probe=probe)
        elif ev in ("read_new", "read_new_many"):
            k = 1 if ev == "read_new" else int(e["k"])
            if i != ep.num_opened:
                raise _Unresolved
            if ev == "read_new":
                ep.read_new()
            else:
                ep.read_new_many(k)
            # Once the engine took it (k within the pool): a forged event's k (10**12) would
            # otherwise fill this process's memory before the engine refuses it.
            read_whole.update(range(i, i + k))
        elif ev in ("extend", "advance", "probe", "read"):
            getattr(ep, ev)(i)
        elif ev == "prune":
            ep.prune(i)
        elif ev == "prune_many":
            if "idx" in e:
                idx = np.asarray(e["idx"], dtype=np.int64)
            else:
                idx = np.flatnonzero(~ep.pruned)
                if int(e.get("n", -1)) != len(idx):
                    raise _Unresolved
            ep.prune_many(idx)
        if ep.tokens != tokens:
            raise _Unresolved
        prev = tokens
    return {"opened": ep.num_opened, "spent": _spent(ep, alone, read_whole), "depth": ep.depths,
            "finished": ep.finished, "pruned": ep.pruned, "tokens": prev}


def _as_mask(idx: list[Any], opened: int,
             cache: dict[tuple[tuple[int, ...], int], np.ndarray] | None = None) -> np.ndarray:
    """A logged index list in increasing order as a mask: the same action (a mask lists
    branches in index order) on the engine's fast path. Any other list is passed on as indices
    (its order numbers the answers; the engine refuses what is not a valid index). `cache`:
    masks already made (read-only: the engine only reads a mask), by list and opened count."""
    # (The checks run in C: map over the list rather than a generator of pairs.)
    if type(idx) is not list or not set(map(type, idx)) <= _INT_ONLY:
        return np.asarray(idx, dtype=np.int64)
    # Plain ints only: a list equal to a cached one is that list, increasing from >= 0.
    key = (tuple(idx), opened)
    mask = None if cache is None else cache.get(key)
    if mask is None:
        if idx and (idx[0] < 0 or not all(map(operator.lt, idx, islice(idx, 1, None)))):
            return np.asarray(idx, dtype=np.int64)
        mask = np.zeros(opened, dtype=bool)
        mask[idx] = True
        if cache is not None:
            mask.flags.writeable = False
            cache[key] = mask
    return mask


_INT_ONLY = frozenset({int})


def _actions_key(actions: list[dict[str, Any]]) -> bytes | str:
    """A traced episode's logged actions as a cache key: their pickle (JSON values from the
    sandbox), or their repr where something in them does not pickle (an in-process trace may
    hold any object a trusted controller logged). A bytes key never equals a str one."""
    try:
        return pickle.dumps(actions, 5)
    except Exception:
        return repr(actions)


def _majority(classes: list[int]) -> int:
    """summary.majority_first_seen of a short list (a dict counts a few classes for less than
    np.unique sorts them): the most frequent class >= 0, ties to the first seen; -1 if none."""
    counts: dict[int, int] = {}
    for a in classes:
        if a >= 0:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return NO_ANSWER
    top = max(counts.values())
    return next(a for a, c in counts.items() if c == top)  # insertion order: first seen


def _wrong_figures(led: dict[str, Any], finals: np.ndarray, gold: int) -> tuple[bool, bool]:
    """For a wrong answer with this ledger (finals: its opened branches' store classes):
    whether the alive branches' majority is right with some still unfinished (stopping later
    could fix it), and whether the opened branches' majority is right but pruning lost it."""
    pruned = led["pruned"]
    opened_right = _majority(finals.tolist()) == gold
    if not pruned.any():
        alive_right = opened_right
        unfinished = not led["finished"].all()
        return alive_right and unfinished, False
    alive = ~pruned
    alive_right = _majority(finals[alive].tolist()) == gold
    return (alive_right and bool((alive & ~led["finished"]).any()),
            opened_right and not alive_right)


def _ledger_sums(led: dict[str, Any]) -> tuple[int, int, bool, bool]:
    """A ledger's pruned tokens, tokens of branches still running at the answer, whether it
    pruned, whether it left branches running: once per distinct ledger."""
    # (Over Python lists: a ledger has a few dozen branches, for which numpy's calls cost more.)
    spent, pruned = led["spent"].tolist(), led["pruned"].tolist()
    # Racing controllers leave branches running when they answer: what those cost never
    # reached a final answer either, and it is invisible in the pruned share.
    live = [not (p or f) for p, f in zip(pruned, led["finished"].tolist(), strict=True)]
    return (sum(compress(spent, pruned)), sum(compress(spent, live)), any(pruned), any(live))


def _spent(ep: Episode, alone: _AloneCosts, read_whole: set[int]) -> np.ndarray:
    """Per opened branch, generated tokens + κ · its revealed probes (docs/semantics.md, Steps
    and costs): an unfinished branch has generated depth·Δ; a finished one its whole
    generation, stepped or read whole as it was opened. Each revealed probe is one depth in
    `history_depths` (a final's depth is not a probe)."""
    finished = ep.finished
    spent = ep.depths * ep.delta
    if ep.probe_cost:
        probes = np.zeros(ep.num_opened, dtype=np.int64)
        for j in range(ep.num_opened):
            probes[j] = len(ep.history_depths(j)) - int(finished[j])
    for j in np.flatnonzero(finished).tolist():
        if j in read_whole:
            alone.whole_upto(j)
            spent[j] = alone.whole[j]
        else:
            alone.upto(j)
            spent[j] = alone.stepped[j]
    if int(spent.sum()) != ep.generated_tokens:
        raise _Unresolved
    return spent + ep.probe_cost * probes if ep.probe_cost else spent


# ---- the digest -------------------------------------------------------------------------------


def _figure(counter: Counter[int], n_episodes: int,
            per_question: Counter[int] | None = None) -> dict[str, Any]:
    """A share of episodes, with the questions it hits most as [question, episodes hit,
    episodes of that question in the set] (so "q19: 137/220" reads without a legend)."""
    total = sum(counter.values())
    per_question = per_question or Counter()
    return {
        "share": 100.0 * total / n_episodes if n_episodes else 0.0,
        "episodes": total,
        "of_episodes": n_episodes,
        "top_questions": [[int(q), int(c), int(per_question.get(q, 0))] for q, c in
                          sorted(counter.items(), key=lambda x: (-x[1], x[0]))[:TOP]],
    }


STOP_REASON_CHARS = 60  # a stop reason is the candidate's own text: kept short in digest.json


def beta_bands(betas: Sequence[float]) -> list[tuple[float, float]]:
    """The β grid cut into (up to) three contiguous bands, low / middle / high, as (lo, hi)
    inclusive bounds: stop reasons pooled over all β hide that a controller stops for other
    reasons when it is cheap than when it is dear."""
    b = sorted(set(float(x) for x in betas))
    if not b:
        return []
    k = min(3, len(b))
    cuts = [round(i * len(b) / k) for i in range(k + 1)]
    return [(b[cuts[i]], b[cuts[i + 1] - 1]) for i in range(k)]


def monotonicity_breaks(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per store, every pair of adjacent β points where mean tokens fall (metrics'
    monotonicity_violations with no tolerance). `significant` when the fall exceeds twice the
    combined standard error."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("beta") is not None:
            out.setdefault(str(r["store"]), [])
    for v in monotonicity_violations(rows, tolerance=0.0):
        out[v.store].append({
            "beta_from": v.beta_low, "beta_to": v.beta_high,
            "tokens_from": round(v.tokens_low, 1), "tokens_to": round(v.tokens_high, 1),
            "significant": bool(v.drop > 2 * v.se),
        })
    return out


SPLIT_EVENTS = 4000  # logged events of the traces from which the replays are split (auto)
PARENT_SHARE = 0.45  # of the replays' events, kept by this process, which also does the rest


def make_digest(
    search: SearchData,
    rows: Sequence[dict[str, Any]],
    episodes: Sequence[dict[str, Any]] | None,
    traces: Sequence[dict[str, Any]] | None,
    *,
    processes: int | None = None,
) -> dict[str, Any]:
    """The digest of one controller's sweep (JSON-ready, deterministic). `processes`: how many
    processes replay the traced episodes' ledgers, forks of this one (None: 2 on Linux where
    this process may run on two cores, one of them is idle now and the traces hold at least
    SPLIT_EVENTS events; else 1). The digest is the same for any number: a fork that fails for any reason
    leaves the whole trace-level part to this process, which computes it as one process does
    (and so raises what one process raises). No fork outlives the call."""
    if traces is not None and not isinstance(traces, Sequence):
        traces = list(traces)  # read more than once below (an iterator would run out)
    kappa = search.proto.probe_cost
    per: dict[str, dict[str, Any]] = {}
    breaks = monotonicity_breaks(rows)
    for name in search.names:
        per[name] = {"monotonicity_breaks": breaks.get(name, [])}

    # The forks start first: they replay their share of the ledgers while this process works
    # out the episode-level figures, then its own share.
    parts = _ledger_parts(search, traces, _process_count(processes, traces))
    facts: dict[int, tuple[Any, ...]] = {}
    with _Forks(_LedgerJob(search, traces or []), parts[1:]) as forks:
        # Episode-level figures: every draw of the sweep.
        ep_by_store: dict[str, list[dict[str, Any]]] = {}
        for e in episodes or []:
            ep_by_store.setdefault(e["store"], []).append(e)
        for name, eps in ep_by_store.items():
            s = search.index.get(name)
            if s is None:
                continue
            per[name].update(_episode_figures(search, s, eps))
        if parts:
            facts = _collect(_LedgerJob(search, traces or []), parts[0], forks)

    # Trace-level figures: the traced draws.
    tr_by_store: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    # (store, question, draw, actions) -> [ledger, _ledger_sums, _wrong_figures once asked]
    ledgers: dict[tuple[int, int, int, bytes | str], list[Any]] = {}
    masks: dict[tuple[tuple[int, ...], int], np.ndarray] = {}  # ledger replays' masks, shared
    for k, t in enumerate(traces or []):
        tr_by_store.setdefault(t["store"], []).append((k, t))
    for name, trs in tr_by_store.items():
        s = search.index.get(name)
        if s is None:
            continue
        bands = beta_bands([t["beta"] for _, t in trs if t.get("beta") is not None])
        reasons: Counter[str] = Counter()
        band_reasons: list[Counter[str]] = [Counter() for _ in bands]
        later: Counter[int] = Counter()
        pruned_away: Counter[int] = Counter()
        per_q: Counter[int] = Counter()
        resolved = pruning = unfinished = 0
        pruned_tokens = running_tokens = all_tokens = 0
        for k, t in trs:
            events = t.get("events") or []
            stops = [e for e in events if e.get("ev") == "stop"]
            reason = (str(stops[-1].get("reason", "?"))[:STOP_REASON_CHARS] if stops
                      else "(no stop event)")
            reasons[reason] += 1
            for (lo, hi), c in zip(bands, band_reasons, strict=True):
                if t.get("beta") is not None and lo <= float(t["beta"]) <= hi:
                    c[reason] += 1
            f = facts.get(k)
            if f is None:  # one process: each trace's ledger in turn, as it comes
                f = _trace_facts(search, s, t, kappa, ledgers, masks)
            if f[1] is None:  # not resolved
                continue
            q, tokens, sums, wrong = f
            resolved += 1
            per_q[q] += 1
            all_tokens += tokens
            pruned_tokens += sums[0]
            running_tokens += sums[1]
            pruning += sums[2]
            unfinished += sums[3]
            if wrong is None:  # answered right
                continue
            if wrong[0]:  # (a Counter keeps a key added with 0: only real hits)
                later[q] += 1
            if wrong[1]:
                pruned_away[q] += 1
        n = len(trs)
        per[name].update({
            "traced_episodes": n,
            # A list, not a dict: JSON files are written with sorted keys, and the order (most
            # frequent first) is part of what the agent reads.
            "stop_reasons": _shares(reasons),
            "stop_reasons_by_beta": [
                {"beta_lo": lo, "beta_hi": hi, "episodes": sum(c.values()),
                 "reasons": _shares(c)} for (lo, hi), c in zip(bands, band_reasons, strict=True)],
            "resolved_episodes": resolved,
            "episodes_with_pruning": pruning,
            "episodes_stopped_with_unfinished_branches": unfinished,
            "pruned_token_share": (100.0 * pruned_tokens / all_tokens) if all_tokens else None,
            "running_at_answer_token_share": (100.0 * running_tokens / all_tokens)
            if all_tokens else None,
            "wrong_stop_later_fixes": _figure(later, resolved, per_q) if resolved else None,
            "wrong_pruned_away_right": _figure(pruned_away, resolved, per_q) if resolved
            else None,
        })
    return {"stores": per}


# ---- episode-level figures --------------------------------------------------------------------


def _episode_figures(search: SearchData, s: int, eps: list[dict[str, Any]]) -> dict[str, Any]:
    """The episode-level figures of one store's episode rows: per wrong episode, whether the
    majority of its opened branches' finals, and of the whole pool, would have been right."""
    try:
        counts = _episode_counts(search, s, eps)
    except Exception:  # an unusual row: the plain loop raises (or not) as it always did
        counts = None
    if counts is None:
        counts = _episode_counts_plain(search, s, eps)
    per_q, ever_right, opened_right, pool_right, wrong, no_answer = counts
    nq = search.data[s].num_questions
    return {
        "episodes": len(eps),
        "wrong_share": 100.0 * wrong / len(eps),
        "no_answer_share": 100.0 * no_answer / len(eps),
        "wrong_opened_majority_right": _figure(opened_right, len(eps), per_q),
        "wrong_pool_majority_right": _figure(pool_right, len(eps), per_q),
        "never_right": [q for q in range(nq) if q not in ever_right],
    }


_EpisodeCounts = tuple[Counter[int], set[int], Counter[int], Counter[int], int, int]


def _episode_counts_plain(search: SearchData, s: int, eps: list[dict[str, Any]]
                          ) -> _EpisodeCounts:
    """Episode by episode: the definition, and what runs on rows _episode_counts declines."""
    opened_right: Counter[int] = Counter()
    pool_right: Counter[int] = Counter()
    per_q: Counter[int] = Counter()
    ever_right: set[int] = set()
    no_answer = wrong = 0
    for e in eps:
        q = int(e["question"])
        per_q[q] += 1
        if e["correct"]:
            ever_right.add(q)
            continue
        wrong += 1
        no_answer += int(e["answer"]) < 0
        prefix = search.prefix_right(s, int(e["draw"]), q)
        if prefix[min(int(e["opened"]), len(prefix) - 1)]:
            opened_right[q] += 1
        if prefix[-1]:
            pool_right[q] += 1
    return per_q, ever_right, opened_right, pool_right, wrong, no_answer


def _episode_counts(search: SearchData, s: int, eps: list[dict[str, Any]]
                    ) -> _EpisodeCounts | None:
    """_episode_counts_plain by columns, reading the draws' prefix tables with numpy; None for
    rows it does not take (a question, draw or opened count out of range), which the plain loop
    then reads. The same fields are read from the same rows, with the same conversions."""
    qs = list(map(int, map(operator.itemgetter("question"), eps)))
    right = list(map(bool, map(operator.itemgetter("correct"), eps)))
    nq = search.data[s].num_questions
    if qs and not (min(qs) >= 0 and max(qs) < nq):
        return None
    per_q = Counter(qs)
    ever_right = set(compress(qs, right))
    wrong = list(map(operator.not_, right))
    bad = list(compress(eps, wrong))
    answers = np.array(list(map(int, map(operator.itemgetter("answer"), bad))), dtype=np.int64)
    no_answer = int(np.count_nonzero(answers < 0))
    q_w = np.array(list(compress(qs, wrong)), dtype=np.int64)
    d_w = np.array(list(map(int, map(operator.itemgetter("draw"), bad))), dtype=np.int64)
    o_w = np.array(list(map(int, map(operator.itemgetter("opened"), bad))), dtype=np.int64)
    if len(bad) and (d_w.min() < 0 or o_w.min() < 0):
        return None
    hit_opened = np.zeros(len(bad), dtype=bool)
    hit_pool = np.zeros(len(bad), dtype=bool)
    draws = np.unique(d_w).tolist()
    for d, (table, lens) in zip(draws, search.prefix_tables(s, draws), strict=True):
        at = np.flatnonzero(d_w == d)
        q, n = q_w[at], lens[q_w[at]]
        hit_opened[at] = table[q, np.minimum(o_w[at], n)]
        hit_pool[at] = table[q, n]
    return (per_q, ever_right, Counter(q_w[hit_opened].tolist()),
            Counter(q_w[hit_pool].tolist()), len(bad), no_answer)


# ---- trace-level facts, in this process or forks of it ----------------------------------------


def _trace_facts(search: SearchData, s: int, t: dict[str, Any], kappa: int,
                 ledgers: dict[tuple[int, int, int, bytes | str], list[Any]],
                 masks: dict[tuple[tuple[int, ...], int], np.ndarray]) -> tuple[Any, ...]:
    """What one traced episode adds to the trace-level figures: (question, None) when its
    ledger does not replay, else (question, its tokens, _ledger_sums, None if it was answered
    right else _wrong_figures). `ledgers`: the ledgers replayed so far (by store, question,
    draw and actions), with their sums and wrong-answer figures; `masks`: _as_mask's cache."""
    events = t.get("events") or []
    q, draw = int(t["question"]), int(t["draw"])
    order = search.order(s, draw, q)
    # Episodes of one draw of a question that took the same actions (a controller whose
    # knobs differ little between some β) have the same ledger: replay it once.
    # The key is the logged actions pickled (a quarter of repr's time): equal pickles
    # are equal actions, and equal actions pickled apart (a string shared in one list
    # and copied in the other) only replay twice.
    key = (s, q, draw, _actions_key([e for e in events if e.get("ev") in ACTIONS]))
    hit = ledgers.get(key)
    if hit is None:
        led = ledger(events, search.question(s, q), order, kappa,
                     search.proto.budget, search.alone(s, draw, q), masks)
        hit = ledgers[key] = [led, None if led is None else _ledger_sums(led), None]
    led, sums = hit[0], hit[1]
    if led is None or sums is None:
        return q, None
    if _correct_of(t, search.gold[s][q]):
        return q, led["tokens"], sums, None
    if hit[2] is None:  # the same for every trace of this ledger
        hit[2] = _wrong_figures(led, search.finals(s, q)[order[:led["opened"]]],
                                int(search.gold[s][q]))
    return q, led["tokens"], sums, hit[2]


class _LedgerJob:
    """_trace_facts of a share of the traces (indices with their store), in one process."""

    def __init__(self, search: SearchData, traces: Sequence[dict[str, Any]]) -> None:
        self.search = search
        self.traces = traces

    def __call__(self, share: list[tuple[int, int]]) -> dict[int, tuple[Any, ...]]:
        kappa = self.search.proto.probe_cost
        ledgers: dict[tuple[int, int, int, bytes | str], list[Any]] = {}
        masks: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        return {k: _trace_facts(self.search, s, self.traces[k], kappa, ledgers, masks)
                for k, s in share}


def _process_count(processes: int | None, traces: Sequence[dict[str, Any]] | None) -> int:
    if processes is not None:
        return max(1, int(processes))
    # Linux only by default: elsewhere a fork of a process with threads is less safe (macOS's
    # frameworks), and Windows has none. The fork touches nothing but Python and numpy.
    if not sys.platform.startswith("linux") or not hasattr(os, "fork") or not traces:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if cores < 2 or _runnable() >= cores:  # no core idle now: a fork would only add its cost
        return 1
    try:
        events = sum(len(t.get("events") or ()) for t in traces)
    except Exception:
        return 1
    return 2 if events >= SPLIT_EVENTS else 1


LOADAVG = "/proc/loadavg"


def _runnable() -> int:
    """Threads runnable on the machine right now, this one included (/proc/loadavg's fourth
    field; 1 where it cannot be read)."""
    try:
        with open(LOADAVG) as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 1


def _ledger_parts(search: SearchData, traces: Sequence[dict[str, Any]] | None, n: int
                  ) -> list[list[tuple[int, int]]]:
    """The traces of known stores, as (index, store) shares for n processes (this one's first,
    PARENT_SHARE of the events when split) by (store, question, draw): the traces that could
    share a ledger replay in the same process, as they would in one. [] with one process, or
    where a trace does not say its store, question or draw plainly (one process then meets
    the error where one process meets it)."""
    if n < 2 or not traces or not hasattr(os, "fork"):
        return []
    try:
        groups: dict[tuple[int, int, int], list[int]] = {}
        weight: dict[tuple[int, int, int], int] = {}
        for k, t in enumerate(traces):
            s = search.index.get(t["store"])
            if s is None:
                continue
            g = (s, int(t["question"]), int(t["draw"]))
            groups.setdefault(g, []).append(k)
            weight[g] = weight.get(g, 0) + len(t.get("events") or ())
    except Exception:
        return []
    total = sum(weight.values())
    # Filled in order, the first share up to its target, the others evenly: contiguous groups
    # keep a process's questions (and their tables) together.
    targets = [PARENT_SHARE * total] + [(1 - PARENT_SHARE) * total / (n - 1)] * (n - 1)
    parts: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    p, load = 0, 0
    for g, ks in groups.items():
        if load >= targets[p] and p + 1 < n:
            p, load = p + 1, 0
        parts[p] += [(k, g[0]) for k in ks]
        load += weight[g]
    return parts


def _collect(job: _LedgerJob, own: list[tuple[int, int]], forks: _Forks
             ) -> dict[int, tuple[Any, ...]]:
    """This process's share, then the forks': every planned trace's facts, or {} where any
    share failed (a fork that died, an error in a share): one process then does it all."""
    try:
        facts = job(own)
    except Exception:
        return {}
    for got in forks.results():
        if got is None:
            return {}
        facts.update(got)
    return facts


def _close_all_but(keep: int) -> None:
    """Close every descriptor above 2 but `keep` (in a fork: /proc lists the open ones)."""
    try:
        fds: Any = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1 << 16)
    for fd in fds:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Forks:
    """Forks of this process, each computing fn(part) from what it inherited and writing the
    result's pickle into an unnamed temporary file (not a pipe: a process forked meanwhile by
    another thread would hold a pipe open, and its end could never be told). Used as a context
    manager: on leaving, any fork not yet waited for is killed and reaped, also on error."""

    def __init__(self, fn: Any, parts: Sequence[Any]) -> None:
        self.fn = fn
        self.kids: list[tuple[int, Any]] = []
        for part in parts:
            self._start(part)

    def _start(self, part: Any) -> None:
        try:
            out = tempfile.TemporaryFile()  # noqa: SIM115 (held until the fork is read)
        except OSError:
            self.kids.append((-1, None))  # no fork: its share counts as failed
            return
        try:
            pid = os.fork()
        except OSError:
            out.close()
            self.kids.append((-1, None))
            return
        if pid == 0:  # the fork: never returns to the caller
            code = 1
            try:
                # Holds no descriptor but its own file: a pipe another thread of the caller was
                # reading would otherwise not end until this fork does.
                _close_all_but(out.fileno())
                gc.disable()  # a collection would walk (and copy) every inherited object
                data = pickle.dumps(self.fn(part), 5)
                os.pwrite(out.fileno(), data, 8)
                os.pwrite(out.fileno(), len(data).to_bytes(8, "little"), 0)  # done: its size
                code = 0
            finally:
                os._exit(code)
        self.kids.append((pid, out))

    def results(self) -> list[Any]:
        """Each fork's result in order, None for one that failed; waits for them."""
        got = []
        while self.kids:
            pid, out = self.kids[0]
            try:
                got.append(self._read(pid, out))
            finally:
                if out is not None:
                    out.close()
                self.kids.pop(0)  # reaped (or not ours to reap: see _read)
        return got

    @staticmethod
    def _read(pid: int, out: Any) -> Any:
        if pid < 0:
            return None
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by someone else: its file says whether it finished
            status = 0
        if status != 0:
            return None
        n = int.from_bytes(os.pread(out.fileno(), 8, 0), "little")
        data = os.pread(out.fileno(), n, 8) if n else b""
        return pickle.loads(data) if n and len(data) == n else None

    def __enter__(self) -> _Forks:
        return self

    def __exit__(self, *exc: Any) -> None:
        while self.kids:
            pid, out = self.kids.pop()
            if pid > 0:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
            if out is not None:
                out.close()


def _shares(c: Counter[str]) -> list[list[Any]]:
    n = sum(c.values())
    return [[r, round(100.0 * k / n, 1)] for r, k in sorted(c.items(), key=lambda x: (-x[1], x[0]))]


def _correct_of(trace: dict[str, Any], gold: int) -> bool:
    """Whether the traced episode was answered right. The scorer's own verdict (`correct`, from
    the episode row) is preferred: answer ids in episode rows may be numbered per episode, and
    only the scorer maps them back to the store's classes."""
    if "correct" in trace:
        return bool(trace["correct"])
    a = trace.get("answer")
    return isinstance(a, int | np.integer) and int(a) == int(gold)


def attach_answers(traces: list[dict[str, Any]], episodes: Sequence[dict[str, Any]]) -> None:
    """Traces carry no answer; take it, and the scorer's verdict, from the episode rows of the
    same (store, β, draw, q)."""
    key = {(e["store"], e["beta"], e["draw"], e["question"]): e for e in episodes}
    for t in traces:
        e = key.get((t["store"], t["beta"], t["draw"], t["question"]))
        if e is not None:
            if e.get("answer") is not None:
                t["answer"] = int(e["answer"])
            if "correct" in e:
                t["correct"] = bool(e["correct"])


# ---- per-store signals ------------------------------------------------------------------------

PROBE_KS = (1, 2, 4, 8, 16)  # probe depths (intervals) at which agreement with the final is shown


def store_signals(search: SearchData) -> dict[str, dict[str, Any]]:
    """Facts about each search store an agent can design against without seeing gold per
    question (DESIGN §8): how right a branch's final answer is by branch length (quartiles of
    its tokens), and how often the probe after k intervals already equals the branch's final
    answer (and is right). Deterministic; computed once per run from the stores alone."""
    out: dict[str, dict[str, Any]] = {}
    for s, name in enumerate(search.names):
        d, gold = search.data[s], search.gold[s]
        nb = np.diff(d.branch_offsets)
        qidx = np.repeat(np.arange(d.num_questions), nb)
        finals = d.final_class.astype(np.int64)
        right = (finals == gold[qidx]) & (finals >= 0)
        tokens = d.tokens.astype(np.float64)
        edges = np.quantile(tokens, [0.25, 0.5, 0.75]) if len(tokens) else np.zeros(3)
        bins = np.searchsorted(edges, tokens, side="right")
        quart = []
        for k in range(4):
            m = bins == k
            quart.append({
                "tokens_lo": int(tokens[m].min()) if m.any() else None,
                "tokens_hi": int(tokens[m].max()) if m.any() else None,
                "branches": int(m.sum()),
                "final_right": round(100.0 * float(right[m].mean()), 1) if m.any() else None,
            })
        counts = np.diff(d.probe_offsets)
        agree = []
        for k in PROBE_KS:
            m = counts >= k
            if not m.any():
                break
            pk = d.probe_class[d.probe_offsets[:-1][m] + k - 1].astype(np.int64)
            agree.append({
                "k": k, "branches": int(m.sum()),
                "equals_final": round(100.0 * float((pk == finals[m]).mean()), 1),
                "probe_right": round(100.0 * float(((pk == gold[qidx[m]]) & (pk >= 0)).mean()),
                                     1),
                "final_right": round(100.0 * float(right[m].mean()), 1),
            })
        out[name] = {"final_right_by_length": quart, "probe_vs_final": agree}
    return out


def render_signals(signals: dict[str, dict[str, Any]], stores: Sequence[str]) -> str:
    lines = ["Per store, from all recorded branches (no controller involved):", "",
             "| store | final answer right, by branch length quartile (tokens) "
             "| probe after k intervals: = its branch's final / right (final right) |",
             "|---|---|---|"]
    for name in stores:
        sig = signals.get(name)
        if sig is None:
            continue
        quart = "; ".join(f"{_tok(b['tokens_lo'])}–{_tok(b['tokens_hi'])}: {b['final_right']:.0f}%"
                          for b in sig["final_right_by_length"] if b["branches"])
        agree = "; ".join(f"k={a['k']}: {a['equals_final']:.0f}% / {a['probe_right']:.0f}% "
                          f"({a['final_right']:.0f}%)" for a in sig["probe_vs_final"])
        lines.append(f"| {name} | {quart} | {agree} |")
    return "\n".join(lines)


def _tok(x: float | None) -> str:
    if x is None:
        return "?"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


# ---- rendering --------------------------------------------------------------------------------


def _fig_text(f: dict[str, Any] | None) -> str:
    if not f:
        return "n/a"
    # "q12: 9/60" = question 12, hit in 9 of its 60 episodes in this set.
    qs = ", ".join(f"q{t[0]}: {t[1]}/{t[2]}" if len(t) > 2 and t[2] else f"q{t[0]}: {t[1]}"
                   for t in f["top_questions"])
    return f"{f['share']:.1f}%" + (f" (most: {qs})" if qs else "")


SHOWN_REASONS = 8  # stop reasons listed per line of the prompt; the rest are summed


def _reasons_text(reasons: Sequence[Sequence[Any]]) -> str:
    from autotts.discover.quote import SHORT_CHARS, visible

    # The reason is the candidate's own text: escaped and cut (issue 21), and only the most
    # frequent few: a reason of its own for every traced episode (660 per store of the AIME
    # environment) would otherwise ride in every later prompt (tests/test_redteam_session11.py).
    txt = ", ".join(f"{visible(r, SHORT_CHARS)} {v:.0f}%" for r, v in reasons[:SHOWN_REASONS])
    rest = reasons[SHOWN_REASONS:]
    if rest:
        txt += f", {len(rest)} other reasons {sum(float(v) for _, v in rest):.0f}%"
    return txt


def render_digest(digest: dict[str, Any], stores: Sequence[str] | None = None,
                  indent: str = "  ") -> str:
    """The digest as compact text for the prompt, stores in the given order. Shares of
    episodes; "q12: 9/60" is question 12, hit in 9 of its 60 episodes."""
    lines = []
    per = digest.get("stores", {})
    for store in [s for s in (stores or sorted(per)) if s in per]:
        d = per[store]
        head = f"{indent}{store}"
        if "episodes" in d:
            head += (f": {d['episodes']} episodes, wrong {d['wrong_share']:.1f}% "
                     f"(no answer {d['no_answer_share']:.1f}%)")
        lines.append(head)
        p = indent * 2
        if "stop_reasons" in d:
            bands = [b for b in d.get("stop_reasons_by_beta") or [] if b["episodes"]]
            if len({str(b["reasons"]) for b in bands}) > 1:  # one line when no band differs
                txt = "; ".join(f"β {b['beta_lo']:g}–{b['beta_hi']:g}: "
                                + _reasons_text(b["reasons"]) for b in bands)
            else:
                txt = _reasons_text(d["stop_reasons"])
            lines.append(f"{p}stop reasons ({d['traced_episodes']} traced episodes): {txt}")
            n, res = d["traced_episodes"], d["resolved_episodes"]
            if n and res >= RESOLVED_ENOUGH * n:
                parts = []
                if d["episodes_with_pruning"] and d.get("pruned_token_share") is not None:
                    parts.append(f"on branches later pruned {d['pruned_token_share']:.1f}%")
                run_share = d.get("running_at_answer_token_share")
                if d["episodes_stopped_with_unfinished_branches"] and run_share is not None:
                    parts.append(f"on branches still running at the answer {run_share:.1f}%")
                if parts:
                    lines.append(f"{p}tokens spent " + "; ".join(parts) + " (of all tokens)")
                if d["episodes_with_pruning"]:
                    lines.append(f"{p}wrong because pruning discarded the right majority: "
                                 f"{_fig_text(d['wrong_pruned_away_right'])}")
                if d["episodes_stopped_with_unfinished_branches"]:
                    lines.append(f"{p}wrong, but running the surviving branches to their end "
                                 f"would have fixed it (stopped too early): "
                                 f"{_fig_text(d['wrong_stop_later_fixes'])}")
            elif n:
                lines.append(f"{p}(branch-level figures omitted: only {res} of {n} traced "
                             "episodes could be replayed, the others prune in batches whose "
                             "traces do not name the branches)")
        if "wrong_opened_majority_right" in d:
            lines.append(f"{p}wrong although the opened branches, run to their end, would have "
                         f"voted right: {_fig_text(d['wrong_opened_majority_right'])}")
            lines.append(f"{p}wrong although the whole pool would have voted right (more width "
                         f"helps): {_fig_text(d['wrong_pool_majority_right'])}")
            nr = d["never_right"]
            lines.append(f"{p}never right at any β: "
                         + (f"{len(nr)} questions: " + ", ".join(f"q{q}" for q in nr) if nr
                            else "none"))
        br = d.get("monotonicity_breaks") or []
        if br:
            txt = "; ".join(
                f"β {b['beta_from']:g}→{b['beta_to']:g}: {b['tokens_from']:,.0f}→"
                f"{b['tokens_to']:,.0f} tokens{'' if b['significant'] else ' (within noise)'}"
                for b in br)
            lines.append(f"{p}β points where cost falls: {txt}")
    return "\n".join(lines)
