"""Red team, session 13 (b): the session's four changes attacked as a child with code execution
would (every field of its rounds and trace events forged).

1. The judge steps a round's advance_many(mask) rows at once (engine.advance_masks_once over an
   EpisodeSlab): forged rounds mixing every row kind, JSON messages (actions taking the round's
   masks between the batched rows, answers, episode errors with on_error 'raise'), trace-event
   flags, masks of the wrong length or naming branches that are not running, counts past the
   masks, the same slot twice, rows for ended episodes, slab rows reused by new episodes,
   budgets spent, a malformed store's questions (the per-episode path) and very wide pools in
   one round, traced units and untraced. Property: the reply, the refusals, the reveals, the
   errors, the traces, the episodes' whole state and the results are those of a judge that
   applies every row one by one (the per-episode path, main's before the batching), and the
   judge never raises anything but a ProtocolError.
2. The sweep's sandbox processes started ahead (start_sandboxed, the gate): the knobs process,
   the only candidate code that runs before "go", is timed while the gate is closed; the
   sandbox process holds no descriptor of the gate; a source is only ever marked 'admitted'
   once the evaluating process admitted it.
3. The guards' shortcuts: names bound by forms the session's helper did not list.
4. The digest (and its fork) on hostile trace events.

Found and fixed:
- The judge stepped only untraced units' usual rows at once; a traced unit's took the
  per-episode path, so a traced draw's rounds cost the judge ~2.4x the CPU of an untraced
  one's (27 rows: ~182 vs ~76 us; main ~182 vs ~161): a timing channel telling the digest's
  traced draws from the scored ones. Traced episodes are now stepped with the others
  (advance_masks_once logs their action as the episode would; ~97 vs ~76 us), traces identical.
- (Before this session.) The digest's ledger replay read a forged READ_NEW×k trace event's `k`
  into a set of branch indices before the engine refused it: a candidate that logged
  `read_new_many` with k = 10**12 made the discovery process (and the digest's fork) fill its
  memory. A forged `prune_many` / `advance_many` event with an index past int64 raised
  OverflowError out of make_digest (the ledger caught the engine's other refusals only). Both
  now leave the trace unresolved, as any other event the engine refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import numpy as np
import pytest

from autotts.sandbox.judge import OutputLimit, ProtocolError, TraceBudget, UnitJudge
from autotts.sandbox.wire import (
    OP_ADVANCE_MANY_IDX,
    OP_ADVANCE_MANY_MASK,
    OP_ANSWER,
    OP_BRANCH_MANY,
    OP_EXTEND,
    OP_JSON,
    OP_PRUNE_MANY_MASK,
    OP_READ_NEW,
)
from autotts.units import EvalProtocol, Questions
from tests.test_engine_slab import random_mask, random_store, state
from tests.test_sandbox import parent  # noqa: F401 (fixture)

# ---- 1. the batched rows against the per-episode judge -----------------------------------------


def _hostile_parts(rng: np.random.Generator) -> list[Questions]:
    """Stores of every kind: random ones, one with a very wide question (the slab's width), and
    a malformed one (a class below -1: its questions take the per-episode path)."""
    parts = [Questions(random_store(rng, int(rng.integers(2, 5)), f"s{k}")) for k in range(2)]
    wide = random_store(rng, 2, "wide")
    parts.append(Questions(_widened(wide, rng)))
    bad = random_store(rng, 3, "bad")
    bad.final_class[int(rng.integers(0, len(bad.final_class)))] = -3
    parts.append(Questions(bad))
    return parts


def _widened(d: Any, rng: np.random.Generator) -> Any:
    """The store with its first question grown to 400 branches (copies of its rows)."""
    from autotts.store import ReplayData

    lo, hi = int(d.branch_offsets[0]), int(d.branch_offsets[1])
    rows = np.concatenate([rng.integers(lo, hi, size=400), np.arange(hi, len(d.tokens))])
    p_off = d.probe_offsets
    probes = [d.probe_class[p_off[r]:p_off[r + 1]] for r in rows]
    offsets = np.concatenate([[0], 400 + d.branch_offsets[2:] - hi]).astype(np.int64)
    return ReplayData(
        name=d.name, delta=d.delta, branch_offsets=offsets, tokens=d.tokens[rows],
        final_class=d.final_class[rows],
        probe_offsets=np.concatenate([[0], np.cumsum([len(p) for p in probes])]).astype(np.int64),
        probe_class=(np.concatenate(probes) if probes else np.zeros(0)).astype(np.int32),
        err_class=d.err_class)


def _judge_pairs(seed: int, units: int = 6):
    """(batching judge, one-by-one judge) for `units` draws of one task (the step tables built
    once, as the supervisor does), and the generator that writes their rounds."""
    rng = np.random.default_rng(1300 + seed)
    trace = seed % 2 == 1
    parts = _hostile_parts(rng)
    budget = [None, 1, int(rng.integers(5, 60)), int(rng.integers(60, 600))][seed % 4]
    proto = EvalProtocol(draws=units, pool=None if seed % 3 else int(rng.integers(1, 30)),
                         probe_cost=int(rng.choice([0, 2])), budget=budget)
    window = int(rng.integers(1, 7))
    tables = None
    for draw in range(units):
        order = rng.permutation(sum(p.data.num_questions for p in parts)).tolist()
        made = []
        for together in (True, False):
            j = UnitJudge(parts, proto, draw, trace=trace, budget=TraceBudget(10**6),
                          window=window, tables=tables if together else None)
            if together:
                tables = j.tables
            else:
                j.slab, j.tables = None, None  # every episode with arrays of its own
            j.order = list(order)
            made.append(j)
        yield made[0], made[1], rng


def _hostile_round(rng: np.random.Generator, judge: UnitJudge
                   ) -> tuple[np.ndarray, list[Any], list[Any], np.ndarray, np.ndarray]:
    """A round over the live episodes in a random order: the usual rows mostly, and every other
    form around them. Returns rows, JSON messages, events, indices, masks (in the rows' order)."""
    rows: list[list[int]] = []
    msgs: list[Any] = []
    events: list[Any] = []
    idx: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    slots = list(judge.live)
    for slot in rng.permutation(slots).tolist():
        ep = judge.live[slot].ep
        opened = ep.num_opened
        r = rng.random()
        e = int(rng.random() < 0.1)
        if e:
            events.append([["note", {"x": int(rng.integers(0, 9))}]])  # dropped (untraced)
        if r < 0.5 and (opened or rng.random() < 0.3):  # (none open: an empty mask)
            m = random_mask(rng, ep)
            if rng.random() < 0.05:
                m = m[:-1]  # too short: the engine's refusal
            masks.append(m)
            rows.append([slot, OP_ADVANCE_MANY_MASK, len(m), 2 if rng.random() < 0.05 else 1, e])
        elif r < 0.58 and opened:  # JSON advance_many taking the next mask of the round
            m = random_mask(rng, ep)
            masks.append(m)
            msgs.append([slot, "advance_many", [["?", len(m)], 1]])
            rows.append([slot, OP_JSON, 0, 0, e])
        elif r < 0.62 and opened:  # JSON advance_many with a list (perhaps a pruned branch)
            msgs.append([slot, "advance_many", [rng.integers(0, opened, 2).tolist(), 1]])
            rows.append([slot, OP_JSON, 0, 0, e])
        elif r < 0.63:
            msgs.append([slot, "error", [str(rng.choice(["exception", "invalid_action"])),
                                         "boom", None]])
            rows.append([slot, OP_JSON, 0, 0, e])
        elif r < 0.66:
            msgs.append([slot, "answer", [int(rng.integers(-1, 4))]])
            rows.append([slot, OP_JSON, 0, 0, e])
        elif r < 0.78:
            rows.append([slot, OP_BRANCH_MANY, int(rng.integers(0, ep.pool_size - opened + 2)),
                         int(rng.random() < 0.5), e])
        elif r < 0.81:
            rows.append([slot, OP_READ_NEW, 0, 0, e])
        elif r < 0.84 and opened:
            m = rng.random(opened) < 0.2
            masks.append(m)
            rows.append([slot, OP_PRUNE_MANY_MASK, opened, 0, e])
        elif r < 0.87 and opened:
            live = ep.running.nonzero()[0].astype(np.int32)
            idx.append(live)
            rows.append([slot, OP_ADVANCE_MANY_IDX, len(live), 1, e])
        elif r < 0.9 and opened:
            rows.append([slot, OP_EXTEND, int(rng.integers(0, opened)), 0, e])
        elif r < 0.93:
            rows.append([slot, OP_ANSWER, 1, int(rng.integers(0, 4)), e])
        elif e:
            events.pop()  # nothing for this slot this round
    # A JSON row carries its events in its message (a row flag there is a forgery).
    ev = iter(events)
    events, mi = [], 0
    for r in rows:
        if r[1] == OP_JSON:
            if r[4]:
                msgs[mi] = [*msgs[mi], next(ev)]
                r[4] = 0
            mi += 1
        elif r[4]:
            events.append(next(ev))
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    ix = np.concatenate(idx).astype(np.int32) if idx else np.zeros(0, np.int32)
    ms = np.concatenate(masks).astype(bool) if masks else np.zeros(0, bool)
    return table, msgs, events, ix, ms


def _forge(rng: np.random.Generator, judge: UnitJudge, table: np.ndarray, msgs: list[Any],
           events: list[Any], ix: np.ndarray, ms: np.ndarray
           ) -> tuple[np.ndarray, list[Any], list[Any], np.ndarray, np.ndarray]:
    """One forgery of a round (a ProtocolError for both judges)."""
    table = table.copy()
    k = int(rng.integers(0, 6))
    mask_rows = (table[:, 1] == OP_ADVANCE_MANY_MASK).nonzero()[0]
    if k == 0 and len(table) >= 2:  # the same slot twice
        table[-1, 0] = table[0, 0]
    elif k == 1 and len(mask_rows):  # a count past the round's masks
        table[mask_rows[-1], 2] = len(ms) + 1
    elif k == 2:  # a slot that is not live (ended, or never started)
        table = np.vstack([table, [[judge.n + 5, OP_ADVANCE_MANY_MASK, 0, 1, 0]]])
    elif k == 3:  # a JSON message no row takes
        msgs = [*msgs, [int(table[0, 0]) if len(table) else 0, "read_new", []]]
    elif k == 4 and len(mask_rows):  # times 1 with a flag no row may carry
        table[mask_rows[0], 4] = 2
    else:  # a mask's count negative
        table = np.vstack([table, [[-1, OP_ADVANCE_MANY_MASK, -1, 1, 0]]])
    return table, msgs, events, ix, ms


def _serve(judge: UnitJudge, rnd: tuple[Any, ...], stop: bool) -> Any:
    table, msgs, events, ix, ms = rnd
    try:
        return judge.serve(table, msgs, events, stop_on_error=stop, indices=ix, masks=ms)
    except (ProtocolError, OutputLimit) as e:
        return ("verdict", type(e).__name__)


def _play(seed: int) -> dict[str, int]:
    """Both judges through units of hostile rounds (a forged one now and then, which ends its
    unit's run); asserts they agree after every round and returns what the rounds reached."""
    seen = {"batched": 0, "refused_batched": 0, "reused": 0, "per_episode": 0, "json_mask": 0,
            "verdicts": 0, "traced": 0}
    stop = seed % 3 == 0
    for together, alone, rng in _judge_pairs(seed):
        assert together.slab is not None
        _play_unit(together, alone, rng, stop, seen)
    return seen


def _play_unit(together: UnitJudge, alone: UnitJudge, rng: np.random.Generator, stop: bool,
               seen: dict[str, int]) -> None:
    rows_used: set[int] = set()
    rounds = 0
    assert together.start() == alone.start()
    rows_used.update(s.row for s in together.live.values())
    while not together.complete and rounds < 400:
        rnd = _hostile_round(rng, together)
        forged = rounds > 5 and rng.random() < 0.02
        if forged:
            rnd = _forge(rng, together, *rnd)
        usual = {r[0] for r in rnd[0].tolist() if r[1] == OP_ADVANCE_MANY_MASK and r[3] == 1
                 and r[0] in together.live and together.live[r[0]].offset >= 0
                 and r[2] == together.live[r[0]].ep.num_opened}
        a = _serve(together, rnd, stop)
        b = _serve(alone, rnd, stop)
        if isinstance(a, tuple) or isinstance(b, tuple):
            assert a == b  # the same verdict; the run ends there
            assert forged
            seen["verdicts"] += 1
            return
        assert a.rows.tolist() == b.rows.tolist()
        assert a.refusals == b.refusals
        assert [c.tolist() for c in a.reveals] == [c.tolist() for c in b.reveals]
        assert [c.dtype for c in a.reveals] == [c.dtype for c in b.reveals]
        assert (a.answered, a.ended) == (b.answered, b.ended)
        assert together.errors == alone.errors
        assert together.traces == alone.traces
        assert together.actions == alone.actions
        seen["batched"] += len(usual)
        seen["refused_batched"] += len(usual & set(a.rows[a.rows[:, 4] == -1, 0].tolist()))
        seen["json_mask"] += sum(1 for m in rnd[1] if m[1] == "advance_many"
                                 and m[2][0][:1] == ["?"])
        started = together.start()
        assert started == alone.start()
        for f in started:
            row = together.live[f[0]].row
            seen["per_episode"] += row < 0
            seen["reused"] += row >= 0 and row in rows_used
            rows_used.add(row)
        assert together.live.keys() == alone.live.keys()
        for slot, s in together.live.items():
            assert state(s.ep) == state(alone.live[slot].ep)
        rounds += 1
    for k in range(len(together.parts)):
        x, y = together.result(k), alone.result(k)
        for f in ("answers", "tokens", "probes", "opened"):
            assert getattr(x, f).tolist() == getattr(y, f).tolist()
        assert x.errors == y.errors and x.traces == y.traces
    seen["traced"] += together.traces is not None and len(together.traces) > 0


SEEDS = range(24)


@pytest.mark.parametrize("seed", SEEDS)
def test_forged_rounds_are_judged_as_one_by_one(seed):
    seen = _play(seed)
    assert seen["batched"] > 0, seen


def test_the_forged_rounds_reach_every_case():
    """Across the seeds: batched rows the engine left to be refused, slab rows given to new
    episodes, a malformed store's episodes, JSON actions taking masks between batched rows,
    and forged rounds that both judges end with the same verdict."""
    total: dict[str, int] = {}
    for seed in SEEDS:
        for k, v in _play(seed).items():
            total[k] = total.get(k, 0) + v
    assert all(v > 0 for v in total.values()), total


def test_a_traced_unit_steps_its_usual_rows_as_an_untraced_one(monkeypatch):
    """Found: a traced unit's usual rows took the per-episode path (the slab was for untraced
    units only), so the judge answered a traced draw's rounds ~2.4x slower than an untraced
    one's (27 rows: ~182 vs ~76 us of judge CPU; main: ~182 vs ~161), which a candidate timing
    its rounds against its own compute could read to tell the digest's traced draws from the
    scored ones (docs/sandbox.md: which draws are traced is the judge's alone). Now the judge
    does the same work for the same round traced or not: counted as the rows stepped by
    engine.advance_masks_once (which logs a traced episode's action as the episode would; the
    fuzz above compares the traces)."""
    from autotts.sandbox import judge as judge_module

    stepped: list[int] = []
    real = judge_module.advance_masks_once

    def spy(slab: Any, tables: Any, eps: Any, *rest: Any) -> Any:
        stepped.append(len(eps))
        return real(slab, tables, eps, *rest)

    monkeypatch.setattr(judge_module, "advance_masks_once", spy)
    rng = np.random.default_rng(3)
    parts = [Questions(random_store(rng, 6, "t"))]
    counts = []
    for trace in (False, True):
        stepped.clear()
        j = UnitJudge(parts, EvalProtocol(draws=1), 0, trace=trace, budget=TraceBudget(10**6))
        j.order = list(range(j.n))
        j.start()
        rows = np.array([[s, OP_BRANCH_MANY, 2, 0, 0] for s in j.live], np.int64)
        j.serve(rows, [], [], stop_on_error=False, indices=np.zeros(0, np.int32),
                masks=np.zeros(0, bool))
        ms = [j.live[s].ep.running for s in j.live]
        rows = np.array([[s, OP_ADVANCE_MANY_MASK, len(m), 1, 0]
                         for s, m in zip(j.live, ms, strict=True)], np.int64)
        j.serve(rows, [], [], stop_on_error=False, indices=np.zeros(0, np.int32),
                masks=np.concatenate(ms))
        counts.append(sum(stepped))
    assert counts[0] == 6
    assert counts[1] == counts[0]


# ---- 1b. the same rows through a supervisor task --------------------------------------------------
# (tests/test_redteam_session9.py forges every field of a traced task, against the engine; here
# the batching task against the one-by-one task.)

I64 = [-(2**63), -(2**31) - 1, -2, -1, 0, 1, 2, 3, 2**31, 2**62, 2**63 - 1]


def _untraced_pair() -> tuple[Any, Any]:
    """Two supervisor tasks past their boot on the toy store, untraced, the second with the
    batching off; slot k is question k; slot 0 has 3 branches
    open."""
    from autotts.sandbox import judge as judge_module
    from autotts.sandbox.supervisor import _Task
    from tests.test_sandbox import FAST
    from tests.test_sandbox_boundary import STORE

    request = {"source": "", "filename": "f.py", "admit": True, "betas": [0.5], "overrides": {},
               "proto": {"draws": 2, "protocol": "shuffle", "pool": None, "seed": 0,
                         "probe_cost": 3, "budget": 400},
               "traces": False, "on_error": "record", "limits": FAST.__dict__,
               "allow_weak": True}
    tasks = []
    for together in (True, False):
        task = _Task(request, [STORE.replay()], [(0, 0, 0, 1), (0, 0, 1, 2)], FAST,
                     TraceBudget(10_000), None)
        task.on_frame({"t": "ready", "isolation": {}})
        task.on_frame({"t": "configs", "name": "x", "configs": [{}]})
        secret, judge_module.secret_order = judge_module.secret_order, lambda n: list(range(n))
        try:
            task.next_batch()
        finally:
            judge_module.secret_order = secret
        if not together:
            task.judge.slab, task.judge.tables = None, None
            for s in task.judge.live.values():
                s.row = s.offset = -1
        tasks.append(task)
    for task in tasks:
        _frame(task, [[0, OP_BRANCH_MANY, 3, 0, 0]])
    assert tasks[0].judge.live[0].offset >= 0 and tasks[1].judge.live[0].offset < 0
    return tasks[0], tasks[1]


def _frame(task: Any, rows: list[list[int]], masks: np.ndarray | None = None,
           m: list[Any] | None = None, e: list[Any] | None = None) -> Any:
    header: dict[str, Any] = {"t": "round", "k": task.token}
    if m is not None:
        header["m"] = m
    if e is not None:
        header["e"] = e
    arrays = [np.array(rows, dtype=np.int64).reshape(-1, 5), np.zeros(0, np.int32),
              np.zeros(0, bool) if masks is None else masks]
    try:
        reply = task.on_frame(header, arrays)
    except (ProtocolError, OutputLimit) as x:
        return ("verdict", type(x).__name__, str(x))
    if reply is None:
        return None
    return ({k: v for k, v in reply.items() if k != "arrays"},
            [a.tolist() for a in reply.get("arrays", [])],
            [str(a.dtype) for a in reply.get("arrays", [])])


@pytest.mark.parametrize("col", [0, 2, 3, 4])
def test_int64_edges_of_a_batched_row_are_answered_as_one_by_one(col):
    """The usual row (slot 0, advance_many of a 3-entry mask, times 1) with one field at each
    int64 edge, the masks holding enough entries: the reply (or verdict) is the per-episode
    judge's, byte for byte; a second, honest row after it too."""
    for v in I64:
        pair = _untraced_pair()
        row = [0, OP_ADVANCE_MANY_MASK, 3, 1, 0]
        row[col] = v
        masks = np.ones(8, bool)
        got = [_frame(t, [row, [1, OP_READ_NEW, 0, 0, 0]], masks,
                      e=[[]] if col == 4 and v == 1 else None) for t in pair]
        assert got[0] == got[1], (col, v)
        if got[0] is not None and got[0][0] != "verdict":
            got = [_frame(t, [[0, OP_ADVANCE_MANY_MASK, 3, 1, 0]], np.ones(3, bool))
                   for t in pair]
            assert got[0] == got[1], (col, v)


@pytest.mark.parametrize("mask", [[0, 0, 0], [1, 0, 1], [1, 1, 1, 1], [1, 1], []])
def test_an_episode_at_its_budget_is_refused_in_the_engines_words(mask):
    """Slot 0 spends its budget (400: read_new of every branch), then sends the usual row:
    the engine's refusal, word for word the per-episode judge's (its mask checked first)."""
    pair = _untraced_pair()
    for t in pair:
        for _ in range(25):
            if _frame(t, [[0, OP_READ_NEW, 0, 0, 0]])[1][0][0][4] < 0:
                break
    m = np.array(mask, bool)
    got = [_frame(t, [[0, OP_ADVANCE_MANY_MASK, len(m), 1, 0]], m) for t in pair]
    assert got[0] == got[1]
    assert got[0][0]["x"], got[0]  # refused


# ---- 2. a sweep started ahead: before "go" -------------------------------------------------------

HANG_IN_SCHEDULE = '''
import time

class Slow:
    NAME = "slow"

    @staticmethod
    def schedule(beta):
        while True:
            time.sleep(0.05)

    def run(self, ep):
        return ep.read_new()
'''


@pytest.mark.usefixtures("parent")
def test_a_knobs_process_that_never_returns_times_out_while_the_gate_is_closed(monkeypatch):
    """The knobs process is the only candidate code that runs before "go"; while the gate is
    closed no wall clock runs, but the start-up limit does: a schedule() that never returns
    ends the task with a timeout verdict, and the gate is never needed."""
    from autotts.sandbox.evaluation import _Gate, _plan, run_sandbox_task
    from autotts.sandbox.supervisor import SandboxLimits

    limits = SandboxLimits(wall_seconds=2, cpu_seconds=30, episode_seconds=1,
                           startup_seconds=6, memory_mb=512, max_output_bytes=4096)
    plan = _plan(HANG_IN_SCHEDULE, [_toy()], [0.5], EvalProtocol(draws=1), limits=limits,
                 _unrestricted=True)
    gate = _Gate()
    # Should the start-up limit not hold while held, the task would wait for its gate forever:
    # "stop" comes long after the limit instead (and the task would end "cancelled").
    late_stop = threading.Timer(40.0, lambda: os.write(gate.w, b"x" * 9))
    late_stop.start()
    try:
        status, verdict = run_sandbox_task(plan.datas, plan.request, plan.units, 1000, gate)
    finally:
        late_stop.cancel()
        gate.close()
    assert status == "verdict" and verdict.kind == "timeout", (status, verdict)
    assert "knobs" in verdict.message


def _toy() -> Any:
    from tests.test_sandbox_boundary import STORE

    return STORE


SPIN_IN_SCHEDULE = '''
import os
import signal


class Spin:
    NAME = "spin"

    @staticmethod
    def schedule(beta):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                pass
        try:
            os.setsid()
        except OSError:
            pass
        x = 0
        while True:
            x += 1

    def run(self, ep):
        return ep.read_new()
'''


@pytest.mark.usefixtures("parent")
def test_a_hostile_knobs_process_called_off_leaves_nothing_behind(tmp_path, monkeypatch):
    """The smoke failed while the sweep's knobs processes ran candidate code that ignores every
    catchable signal, leaves its session and spins: cancel() returns with no process (the
    `parent` fixture: none of this process's children is left), no temporary directory, and
    nothing to return."""
    import tempfile

    from autotts.sandbox.evaluation import start_sandboxed
    from tests.test_sandbox import FAST, _children_of

    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    pending = start_sandboxed(SPIN_IN_SCHEDULE, [_toy()], [0.0, 1.0], EvalProtocol(draws=2),
                              limits=FAST, workers=2, _unrestricted=True)
    threading.Event().wait(2.0)  # the knobs processes spin meanwhile
    pending.cancel()
    assert list(d.iterdir()) == []
    assert _children_of(os.getpid()) == []
    with pytest.raises(RuntimeError):
        pending.result()


FDS_IN_SCHEDULE = '''
import os


def _fds():
    seen = []
    for fd in range(1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        seen.append([fd, st.st_dev, st.st_ino])
    return seen


class Fds:
    NAME = "fds"

    @staticmethod
    def schedule(beta):
        return {"n": len(_fds())}  # (the same in every sandbox process: its knobs must be)

    def __init__(self, n=0):
        self.n = n

    def run(self, ep):
        ep.trace("fds", fds=_fds(), n=self.n)  # a batch: a fork of the zygote, as the knobs'
        return ep.read_new()
'''


@pytest.mark.usefixtures("parent")
def test_the_knobs_process_holds_no_descriptor_of_the_gate():
    """Code execution in the knobs process of a task started ahead (it runs before "go"):
    no descriptor it holds is the gate's pipe, so it can neither take another task's record
    nor learn when the evaluation goes on."""
    from autotts.sandbox.evaluation import start_sandboxed
    from tests.test_sandbox import FAST

    pending = start_sandboxed(FDS_IN_SCHEDULE, [_toy()], [0.0, 1.0], EvalProtocol(draws=2),
                              limits=FAST, workers=2, traces=True, _unrestricted=True)
    gate = pending._pool.gate if pending._pool is not None else None
    assert gate is not None  # two tasks, local workers: started ahead
    pipe = os.fstat(gate.r)
    ev = pending.result()
    held = [(e["fds"], e["n"]) for t in ev.traces for e in t["events"] if e["ev"] == "fds"]
    assert held and all(len(fds) == n >= 3 for fds, n in held)  # the knobs process held as many
    assert (pipe.st_dev, pipe.st_ino) not in {(d, i) for fds, _ in held for _, d, i in fds}


def test_only_a_source_admitted_here_is_marked_admitted(monkeypatch):
    """The sandbox process skips its own admission when the request says 'admitted'. That
    key is set from the evaluating process's own admission of the same text, never from
    anything the candidate gives (its knobs travel in the unit frames): a source that only
    admission refuses (a computed attribute name, which the run-time guards would allow) is
    refused before any sandbox process starts, whatever the candidate's schedule says."""
    from autotts.sandbox import SandboxError
    from autotts.sandbox.evaluation import _plan, evaluate_sandboxed
    from tests.test_sandbox import FAST

    computed = '''
class C:
    NAME = "c"

    @staticmethod
    def schedule(beta):
        return {"admitted": True, "admit": False}

    def __init__(self, admitted=True, admit=False):
        pass

    def run(self, ep):
        name = "read" + "_new"
        return getattr(ep, name)()
'''
    with pytest.raises(SandboxError) as err:
        evaluate_sandboxed(computed, [_toy()], [0.5], EvalProtocol(draws=1), limits=FAST)
    assert err.value.verdict.kind == "forbidden"
    plan = _plan(VOTE_OK, [_toy()], [0.5], EvalProtocol(draws=1), limits=FAST)
    assert plan.request["admitted"] is True
    plan = _plan(computed, [_toy()], [0.5], EvalProtocol(draws=1), limits=FAST,
                 _unrestricted=True)
    assert plan.request["admitted"] is False  # never admitted here: the sandbox decides


VOTE_OK = '''
class Vote:
    NAME = "vote"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
'''


# ---- 3. the guards' shortcuts: more binding forms -------------------------------------------------


@pytest.mark.parametrize("form", [
    "try:\n    pass\nexcept* ValueError as len:\n    pass\n",
    "import numpy.linalg as len\n",
    "from numpy import float64 as len\n",
    "match 1:\n    case {**len}:\n        pass\n",
    "match 1:\n    case [*len]:\n        pass\n",
    "match 1:\n    case int() as len:\n        pass\n",
    "class K:\n    len = 1\n",
    "def f(*, len=1):\n    return len\n",
    "f = lambda *len: len\n",
    "x = [len for len in ()]\n",
    "def g():\n    global len\n",
    "del len\n",
    "for (a, [b, *len]) in ():\n    pass\n",
    "with open as (len, y):\n    pass\n",
    "len: int\n",
    "(len := 3)\n",
])
def test_every_binding_form_keeps_the_name_checked(form):
    """A name the module binds anywhere, in any form, is not left unchecked (each form also
    names `len` as written: the parser normalises identifiers, so a look-alike spelling is the
    same name)."""
    import ast

    from autotts.sandbox.admission import UNCHECKED_BUILTINS, unshadowed_names

    tree = ast.parse(form + "y = len(())\n")
    assert "len" not in unshadowed_names(tree, UNCHECKED_BUILTINS)
    lookalike = ast.parse(form.replace("len", "\uff4cen") + "y = len(())\n")  # fullwidth l
    assert "len" not in unshadowed_names(lookalike, UNCHECKED_BUILTINS)


# ---- 4. the digest on hostile trace events ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_sweep() -> tuple[Any, Any, list[Any], list[Any], list[Any]]:
    from autotts.discover.digest import attach_answers
    from autotts.evaluate import evaluate
    from autotts.synth import SynthParams, generate

    stores = [generate(SynthParams(questions=6, branches=12, seed=31, model="red-a",
                                   benchmark="s"))]
    proto = EvalProtocol(draws=2, probe_cost=3)
    rows: list[Any] = []
    eps: list[Any] = []
    trs: list[Any] = []
    for c in ("parallel_probe", "st_bon"):
        ev = evaluate(c, stores, [0.0, 1.0], proto, episodes=True, traces=True)
        attach_answers(ev.traces or [], ev.episodes or [])
        rows += ev.rows
        eps += ev.episodes or []
        trs += ev.traces or []
    return stores, proto, rows, eps, trs


BIG = [-1, 0, 1, 2, 7, 10**4, 2**31, 2**63 - 1, 2**63, 2**70, -(2**70)]


def _forged_event(rng: np.random.Generator, t: int) -> dict[str, Any]:
    """A trace event as Episode.trace makes it from a controller's kind and data (JSON values
    only: the judge cleans them): an action's name, and fields the ledger reads, at edges."""
    from autotts.discover.digest import ACTIONS

    kind = str(rng.choice(sorted(ACTIONS)))
    pick = lambda vals: vals[int(rng.integers(0, len(vals)))]  # noqa: E731
    data: dict[str, Any] = {}
    for key in ("tokens", "i", "k", "n", "times"):
        if rng.random() < 0.7:
            data[key] = pick([*BIG, "3", "x", None, 1.5, [1], {"a": 1}, True])
    if rng.random() < 0.6:
        data["idx"] = pick([[], [0], [0, 1], [1, 0], [2**70], [0, 2**70], [-(2**70)], [0.5],
                            [[0]], "01", {"a": 1}, [True, False], [None]])
    return {**data, "t": t, "ev": kind}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_hostile_trace_events_give_the_same_digest_split_or_not(small_sweep, monkeypatch):
    """Traces from the sandbox carry the controller's own events, and their kind can be any
    action's name: forged events (every field the ledger reads at int64's edges and past them,
    of every JSON type) inserted in real traces leave make_digest raising nothing, and the
    digest the same in one process and split over a fork, with the fork reaped."""
    import copy
    import json as _json

    from autotts.discover.digest import SearchData, make_digest

    stores, proto, rows, eps, trs = small_sweep
    rng = np.random.default_rng(13)
    forks: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    for _ in range(6):
        hostile = copy.deepcopy(trs)
        for t in hostile:
            evs = t["events"]
            for _ in range(int(rng.integers(0, 3))):
                at = int(rng.integers(0, len(evs) + 1))
                evs.insert(at, _forged_event(rng, at))
        one = make_digest(SearchData(stores, proto), rows, eps, hostile, processes=1)
        two = make_digest(SearchData(stores, proto), rows, eps, hostile, processes=2)
        assert _json.dumps(one, sort_keys=True) == _json.dumps(two, sort_keys=True)
    assert forks
    for pid in forks:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped by make_digest


def test_a_forged_index_past_int64_leaves_the_trace_unresolved(small_sweep):
    """Found: np.asarray(idx, int64) of a forged prune_many / advance_many index past int64
    raised OverflowError out of make_digest (in one process, and so after a failed fork too)."""
    from autotts.discover.digest import SearchData, ledger

    stores, proto, _, _, trs = small_sweep
    search = SearchData(stores, proto)
    t = trs[0]
    s, q, draw = 0, int(t["question"]), int(t["draw"])
    for ev in ({"ev": "prune_many", "tokens": 0, "idx": [2**70], "t": 0},
               {"ev": "advance_many", "tokens": 0, "idx": [1, 0, 2**70], "t": 0},
               {"ev": "prune_many", "tokens": 0, "idx": 2**64, "t": 0}):
        assert ledger([ev], search.question(s, q), search.order(s, draw, q),
                      proto.probe_cost) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc here")
def test_a_forged_read_new_many_event_does_not_fill_the_digests_memory():
    """Found: a forged READ_NEW×k event's k (10**12) became a set of branch indices before the
    engine refused it: the process computing the digest filled its memory. Run here in a child
    with an address-space limit 256 MiB above what it has mapped once imported (the set took
    it all within a second, then MemoryError)."""
    code = textwrap.dedent('''
        import resource
        import numpy as np
        from autotts.engine import Question
        from autotts.discover.digest import ledger
        from autotts.synth import SynthParams, generate

        d = generate(SynthParams(questions=1, branches=5, seed=3, model="m", benchmark="s"))
        d = getattr(d, "replay", lambda: d)()
        q = Question(d, 0)
        with open("/proc/self/status") as f:
            vm = [int(x.split()[1]) for x in f if x.startswith("VmSize:")][0] * 1024
        limit = vm + (256 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        ev = {"ev": "read_new_many", "tokens": 0, "i": 0, "k": 10**12, "t": 0}
        try:
            out = ledger([ev], q, np.arange(q.num_branches), 0)
        except MemoryError:
            print("MemoryError")
        else:
            print("ok" if out is None else "resolved")
    ''')
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.stdout.strip() == "ok", (out.stdout, out.stderr[-2000:])


# ---- the lead's last attack: forged frames from the knobs process while its task is held ------

FORGE_IN_SCHEDULE = '''
import json
import os
import stat
import struct

FORGED = []


def _frame(header):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def _forge(what):
    # Every pipe this process may write to (the result pipe among them): frames the judge
    # would take for the sandbox's own, sent while the task waits at its gate.
    for fd in range(3, 256):
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            os.write(fd, _frame(what))
            FORGED.append(fd)
        except OSError:
            pass


class Forge:
    NAME = "forge"

    @staticmethod
    def schedule(beta):
        if not FORGED:
            for header in HEADERS:
                _forge(header)
        return {"n": 1}

    def __init__(self, n=1):
        self.n = n

    def run(self, ep):
        return ep.read_new()
'''

FORGED_HEADERS = {
    # knobs of its choosing, before its own (the judge then takes a second configs frame)
    "configs": [{"t": "configs", "name": "forge", "configs": [{"n": 2}, {"n": 2}]}],
    # a batch's end and its results with a guessed token, before any batch was sent
    "unit_done": [{"t": "unit_done", "stdout": "", "dropped": 0, "k": 0},
                  {"t": "round", "m": [], "e": [], "k": 0}],
    # the end of the whole task, as if the gate had said stop
    "done": [{"t": "done"}],
    # a death of the sandbox with a status that reads as a clean exit
    "died": [{"t": "died", "status": 0}],
}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("kind", sorted(FORGED_HEADERS))
def test_forged_frames_from_a_held_knobs_process_end_in_a_verdict(kind):
    """An agent with code execution in the knobs process of a sweep started ahead (the only
    candidate code that runs before "go") writes frames of its own onto every pipe it holds,
    the result pipe among them, while its task waits at the gate: other knobs, a batch's end
    and round with a guessed token, the task's end, a clean death. The evaluation ends in a
    crash or interface verdict, never in rows; nothing is left running (`parent`) once the
    exception is let go (a failed evaluation's pool shuts down when its outcomes are freed: the
    other workers' tasks are waited for then, not when the verdict is raised)."""
    import gc

    from autotts.errors import SandboxError
    from autotts.sandbox.evaluation import start_sandboxed
    from tests.test_sandbox import FAST

    source = FORGE_IN_SCHEDULE.replace("in HEADERS", f"in {FORGED_HEADERS[kind]!r}")
    pending = start_sandboxed(source, [_toy()], [0.0, 1.0], EvalProtocol(draws=2), limits=FAST,
                              workers=2, _unrestricted=True)
    assert pending._pool is not None  # two local tasks: started ahead, held at the gate
    threading.Event().wait(1.0)  # the knobs processes forge meanwhile
    with pytest.raises(SandboxError) as e:
        pending.result()
    verdict = e.value.verdict
    del e
    gc.collect()
    assert verdict.kind in ("crash", "interface"), verdict
