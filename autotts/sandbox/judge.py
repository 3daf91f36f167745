"""The trusted side of the sandbox boundary: the judge that holds the replay engine.

The sandbox child runs only the controller, against a client handle that mirrors what its actions
revealed (autotts.sandbox.client). Every action is a request to the judge, which applies it to a
real `Episode` here, in a trusted process, and replies with what the action revealed (the
episode's reveal journal) and the public counters. The judge alone holds the replay data, the
draw orders, the budget, the costs and the action counts, and it alone says what an episode cost
and which store class an answer names; nothing the child claims about those is used.

`UnitJudge` serves one work unit (one store, one configuration, a range of draws). It decides
when episodes start (a window of at most `window` live episodes), validates every message of the
child strictly (`ProtocolError` on anything malformed: the caller turns it into a 'crash'
verdict), and never lets an exception of its own escape on the child's input.
"""

from __future__ import annotations

import bisect
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotts.draws import draw_order
from autotts.engine import (
    NO_ANSWER,
    Episode,
    EpisodeSlab,
    InvalidAction,
    StepTables,
    advance_masks_once,
    store_class,
)
from autotts.sandbox.wire import (
    OP_ADVANCE,
    OP_ADVANCE_MANY_IDX,
    OP_ADVANCE_MANY_MASK,
    OP_ANSWER,
    OP_BRANCH,
    OP_BRANCH_MANY,
    OP_EXTEND,
    OP_JSON,
    OP_PROBE,
    OP_PRUNE,
    OP_PRUNE_MANY_IDX,
    OP_PRUNE_MANY_MASK,
    OP_READ,
    OP_READ_NEW,
    OP_READ_NEW_MANY,
    REFUSED,
    REPLY_COLS,
    escape,
)
from autotts.units import BlockResult, EvalProtocol, Questions

EPISODE_ERRORS = ("exception", "invalid_action", "non_answer")
MAX_MESSAGE = 2000  # characters of an error message kept from the child
MAX_TRACEBACK = 4000
MAX_EVENT_ITEMS = 64 * 1024  # JSON values plus string characters in one trace event
MAX_STRING = 4096  # characters of one string in a trace event
MAX_KIND = 64


class ProtocolError(Exception):
    """The child broke the wire protocol (a forged or malformed message)."""


class OutputLimit(Exception):
    """The child tried to make the parent hold more than its share (traces)."""


@dataclass
class TraceBudget:
    """What the candidate's trace events may still make this process hold, in JSON values plus
    string characters. One budget is shared by every unit a task serves; the evaluation splits
    its total over its tasks."""

    items: int
    used: int = 0


@dataclass
class _Slot:
    ep: Episode
    part: int
    draw: int
    question: int
    row: int = -1  # the episode's row of the unit's EpisodeSlab (-1: arrays of its own)
    offset: int = -1  # where its question's cells start in the StepTables (-1: not there)
    events: list[dict[str, Any]] = field(default_factory=list)


class TaskTables:
    """The step tables of every question of a task's stores, one after the other
    (engine.StepTables), built once per task: every unit of the task steps its episodes'
    advance_many(mask) rows over them at once."""

    def __init__(self, stores: Sequence[Questions]) -> None:
        questions = []
        self._stores = list(stores)  # (kept: _first is keyed by their ids)
        self._first: dict[int, int] = {}
        for store in self._stores:
            self._first[id(store)] = len(questions)
            questions.extend(store[q] for q in range(store.data.num_questions))
        self.steps = StepTables(questions)

    def offset(self, store: Questions, q: int) -> int:
        """Where question q of `store` starts in the tables; -1 if it is not there."""
        first = self._first.get(id(store))
        return -1 if first is None else self.steps.offset(first + q)


def _index(v: Any, what: str) -> int:
    # Any size: the engine refuses one past the pool (or negative) with the InvalidAction the
    # candidate gets in-process, where ep.advance(2**64) is a refusal it may catch, not the end
    # of the run. (JSON caps it: the parser takes at most 4300 digits.)
    if type(v) is not int:
        raise ProtocolError(f"{what} is not an integer")
    return v


def _clean_json(obj: Any, limit: int) -> tuple[Any, int]:
    """A copy of a JSON value from the child with every string (and key) escaped and cut to
    MAX_STRING characters, and its size: one per value plus the characters of its strings.
    OutputLimit past `limit`."""
    size = 0

    def walk(o: Any) -> Any:
        nonlocal size
        size += 1
        if size > limit:
            raise OutputLimit(f"a trace event is larger than {limit} values and characters")
        t = type(o)
        if t is str:
            size += len(o)
            return escape(o, MAX_STRING, newlines=False) if not o.isprintable() or len(
                o) > MAX_STRING else o
        if t is list:
            return [walk(x) for x in o]
        if t is dict:
            out = {}
            for k, v in o.items():
                size += len(k)
                out[escape(k, MAX_KIND, newlines=False)] = walk(v)
            return out
        return o

    return walk(obj), size


def _which(v: Any) -> list[Any]:
    if type(v) is not list:
        raise ProtocolError("branch list is not a list")
    return v


# A JSON message's action: its number of arguments, and the engine's method. Argument values
# are the engine's to check: a wrong type or range is an InvalidAction for the candidate, as
# in-process.
ACTIONS = {"advance_many": 2, "advance": 1, "branch": 1, "branch_many": 2, "extend": 1,
           "probe": 1, "read": 1, "read_new": 0, "read_new_many": 1, "prune": 1, "prune_many": 1}
_SCALAR_ARGS = {"advance", "extend", "probe", "read", "prune", "read_new_many", "branch_many"}
_METHOD = {name: getattr(Episode, name) for name in ACTIONS}
# A row's scalar actions: `a` is the argument, `b` must be 0.
_ROW_SCALAR = {OP_ADVANCE: ("advance", Episode.advance), OP_EXTEND: ("extend", Episode.extend),
               OP_PROBE: ("probe", Episode.probe), OP_READ: ("read", Episode.read),
               OP_PRUNE: ("prune", Episode.prune),
               OP_READ_NEW_MANY: ("read_new_many", Episode.read_new_many)}
_ADVANCE_MANY, _PRUNE_MANY = Episode.advance_many, Episode.prune_many
_BRANCH, _BRANCH_MANY, _READ_NEW = Episode.branch, Episode.branch_many, Episode.read_new
_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool))


def secret_order(n: int) -> list[int]:
    """The order a batch's n episodes start in (slot -> position): a permutation no process of
    the sandbox can predict. (Tests that forge frames for known questions replace it.)"""
    order = list(range(n))
    # Seeded from the OS per batch (one read: SystemRandom's shuffle reads it once per entry).
    random.Random(os.urandom(16)).shuffle(order)
    return order


@dataclass
class Served:
    """One round's answer: `rows` [slot, generated, probes, actions, n] per action in the
    round's order (n == REFUSED: a refusal, its message next in `refusals`), the round's reveals
    (branch, depth, answer, final) that the rows take n at a time, and which slots were
    answered and which episodes ended."""

    rows: np.ndarray
    refusals: list[str]
    reveals: list[np.ndarray]
    answered: list[int]
    ended: list[int]


class UnitJudge:
    """Serves one batch of episodes to the child: one draw of each of `parts` (a store's
    questions each), all under one configuration, so that the sandbox process that runs them
    never meets the same question twice.

    Position p numbers the parts' questions in order (results, errors and traces are in that
    order). The child never sees it: episodes start in a secret random order, and slot k, the
    number the child knows an episode by, is the k-th episode started. In position order the
    k-th run() call of a batch was question k of a known store in every draw and β, so a
    controller (no code execution needed: a counter) knew which question it played, and the
    prompt's per-question feedback ("never right at any β: q3, ...") became a per-question
    policy on the search split (tests/test_redteam_session11.py)."""

    def __init__(self, parts: list[Questions], proto: EvalProtocol, draw: int, *,
                 trace: bool, budget: TraceBudget, window: int = 256,
                 tables: TaskTables | None = None) -> None:
        self.parts = parts
        self.proto = proto
        self.draw = draw
        sizes = [q.data.num_questions for q in parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.n = self.offsets[-1]
        self.trace = trace
        self.budget = budget
        self.window = max(1, window)
        self.next = 0  # next slot to start
        self.order = secret_order(self.n)  # slot -> position: secret, fresh for every batch
        self.live: dict[int, _Slot] = {}
        self.stop_starting = False  # on_error='raise' stops starting episodes after an error
        self.answers = [np.full((1, n), NO_ANSWER, dtype=np.int32) for n in sizes]
        self.tokens = [np.zeros((1, n), dtype=np.int64) for n in sizes]
        self.probes = [np.zeros((1, n), dtype=np.int32) for n in sizes]
        self.opened = [np.zeros((1, n), dtype=np.int32) for n in sizes]
        # (position, record, traceback)
        self.errors: list[tuple[int, dict[str, Any], str | None]] = []
        self.traces: list[tuple[int, dict[str, Any]]] | None = [] if trace else None
        self.actions = 0  # requests served (a bench figure)
        # The episodes live in the rows of one slab, so that serve() steps a round's
        # advance_many(mask) rows at once (engine.advance_masks_once, which logs a traced
        # episode's action as the episode would: traced draws are judged as fast as the
        # others, so the time a round takes does not tell them, tests/test_redteam_session13b).
        # A row is given to the next episode once its last one has ended (the ended Episode is
        # dropped: nothing reads it again).
        self.tables: TaskTables | None = tables if tables is not None else TaskTables(parts)
        steps = self.tables.steps
        rows = min(self.window, self.n)
        self.slab: EpisodeSlab | None = EpisodeSlab(rows, steps.width, steps.classes)
        self.free: list[int] = list(range(rows - 1, -1, -1))

    # ---- episodes ----------------------------------------------------------------------------

    def where(self, slot: int) -> tuple[int, int, int]:
        """(part, draw, question) of a slot."""
        pos = self.order[slot]
        k = bisect.bisect_right(self.offsets, pos) - 1
        return k, self.draw, pos - self.offsets[k]

    def start(self) -> list[list[int]]:
        """Start episodes up to the window: [slot, pool size, no-answer class, Δ] for each (the
        public facts the child's handle needs; Δ is the slot's store's)."""
        out: list[list[int]] = []
        live, window, n, offsets, secret = self.live, self.window, self.n, self.offsets, self.order
        p, draw, trace = self.proto, self.draw, self.trace
        while len(live) < window and self.next < n and not self.stop_starting:
            slot = self.next
            self.next += 1
            pos = secret[slot]
            k = bisect.bisect_right(offsets, pos) - 1
            part = self.parts[k]
            delta = int(part.data.delta)
            q = pos - offsets[k]
            question = part[q]
            order = draw_order(p.protocol, draw, q, question.num_branches, seed=p.seed, n=p.pool)
            slab, tables = self.slab, self.tables
            off = -1 if slab is None or tables is None else tables.offset(part, q)
            if off >= 0 and slab is not None and len(order) <= slab.width:
                row = self.free.pop()
                ep = Episode(question, order, probe_cost=p.probe_cost, budget=p.budget,
                             trace=trace, journal=True, storage=slab.storage(row, question,
                                                                            len(order)))
                live[slot] = _Slot(ep, k, draw, q, row, off)
            else:
                ep = Episode(question, order, probe_cost=p.probe_cost, budget=p.budget,
                             trace=trace, journal=True)
                live[slot] = _Slot(ep, k, draw, q)
            out.append([slot, ep.pool_size, ep.no_answer_class, delta])
        return out

    @property
    def complete(self) -> bool:
        return not self.live and (self.next >= self.n or self.stop_starting)

    def _finish(self, slot: int, s: _Slot, answer: int) -> None:
        ep, k, q = s.ep, s.part, s.question
        self.answers[k][0, q] = answer
        self.tokens[k][0, q] = ep.tokens
        self.probes[k][0, q] = ep.num_probes
        self.opened[k][0, q] = ep.num_opened
        if self.traces is not None:
            self.traces.append((self.offsets[k] + q, {"question": q, "draw": s.draw,
                                                      "events": ep.trace_events()}))
        ep.close()
        del self.live[slot]
        if s.row >= 0:
            self.free.append(s.row)

    # ---- the child's messages ----------------------------------------------------------------

    def serve(self, rows: np.ndarray, messages: Any, events: Any, *, stop_on_error: bool,
              indices: np.ndarray, masks: np.ndarray) -> Served:
        """Apply one round of the child's messages: `rows` an (R, ROUND_COLS) int64 table (its
        dtype and shape checked by the caller), `messages` and `events` the header's JSON
        messages and trace events, `indices` / `masks` the round's raw branch lists (int32 /
        bool, one-dimensional). Raises ProtocolError / OutputLimit on a malformed or oversized
        message (nothing else)."""
        if type(messages) is not list or type(events) is not list:
            raise ProtocolError("a round's messages or events are not lists")
        self._indices, self._masks = indices, masks
        self._pos = self._mpos = 0
        self._out: list[int] = []
        self._refusals: list[str] = []
        self._journal: list[tuple[Any, ...]] = []
        live = self.live
        seen: set[int] = set()
        answered: list[int] = []
        ended: list[int] = []
        mi = ei = 0
        if len(rows) > len(live):
            # Each row names a distinct live episode: checked before the table becomes Python
            # lists (a forged 64 MiB table would be ~7 times that as lists of ints).
            raise ProtocolError("a round of more rows than episodes waiting on the sandbox")
        out, journal, refusals, take = self._out, self._journal, self._refusals, self._take
        n_masks = len(masks)
        stepped = 0  # advance_many rows served (added to self.actions after the loop)
        # The usual advance_many(mask) rows, stepped together after the loop: their slots and
        # mask starts (their masks hold `together` entries), and after each other row, how
        # many of them came before it and what it left in `out`, `refusals` and `journal`.
        batch: list[_Slot] = []
        starts: list[int] = []
        together = 0
        marks: list[tuple[int, int, int, int]] = []
        for slot, op, a, b, e in rows.tolist():
            s = live.get(slot)
            if s is None or slot in seen:
                raise ProtocolError("a message for an episode that is not waiting on the sandbox")
            seen.add(slot)
            if e:
                if e != 1 or ei >= len(events) or op == OP_JSON:
                    raise ProtocolError("a row's trace events are not the round's next")
                self._events(s, events[ei])
                ei += 1
            if op in (OP_ADVANCE_MANY_MASK, OP_ADVANCE_MANY_IDX):
                # Most rows: _row's and _apply's path for advance_many, inline (a third of the
                # judge's own time per action was calls), a mask's _take too. Keep them in step.
                ep = s.ep
                if op == OP_ADVANCE_MANY_MASK:
                    mpos = self._mpos
                    if not 0 <= a <= n_masks - mpos:
                        raise ProtocolError("a mask past the round's masks")
                    self._mpos = mpos + a
                    if b == 1 and s.offset >= 0 and a == ep.num_opened:
                        # The usual row (ep.advance_many(ep.running)): with the others, below.
                        stepped += 1
                        batch.append(s)
                        starts.append(mpos)
                        together += a
                        out += (slot, 0, 0, 0, 0)
                        answered.append(slot)
                        continue
                    which = masks[mpos : mpos + a]
                else:
                    which = take(False, a)
                stepped += 1
                try:
                    _ADVANCE_MANY(ep, which, b)
                except InvalidAction as x:
                    refusals.append(str(x)[:MAX_MESSAGE])
                    out += (slot, ep.generated_tokens, ep.num_probes, ep.num_actions, REFUSED)
                except (TypeError, ValueError, OverflowError, IndexError) as x:
                    raise ProtocolError("unreadable arguments for advance_many: "
                                        f"{type(x).__name__}") from None
                else:
                    n = ep.move_journal(journal)
                    out += (slot, ep.generated_tokens, ep.num_probes, ep.num_actions, n)
                answered.append(slot)
            elif op == OP_ANSWER:
                if a == 0 and b == 0:
                    ans = NO_ANSWER
                elif a == 1 and -(2**31) <= b < 2**31:
                    ans = store_class(s.ep, b)
                else:
                    raise ProtocolError("an answer that is not an int32 class or null")
                self._finish(slot, s, ans)
                ended.append(slot)
            elif op == OP_JSON:
                if a or b or mi >= len(messages):
                    raise ProtocolError("a JSON row without its message")
                if self._message(slot, s, messages[mi], stop_on_error):
                    answered.append(slot)
                else:
                    ended.append(slot)
                mi += 1
            else:
                self._row(slot, s.ep, op, a, b)
                answered.append(slot)
            marks.append((len(batch), len(out), len(refusals), len(journal)))
        self.actions += stepped
        if mi != len(messages) or ei != len(events):
            raise ProtocolError("a round's messages or trace events that no row takes")
        table = (np.array(out, dtype=np.int64).reshape(-1, REPLY_COLS) if out
                 else np.zeros((0, REPLY_COLS), np.int64))
        if batch:
            self._step_masks(batch, starts, together, marks, masks, table, refusals, journal)
        if not journal:
            reveals = list(_EMPTY)
        else:
            # The engine's own dtypes (int64 branches and depths: the child indexes its mirror
            # with them as they are), one concatenation per column for the whole round.
            cols = list(zip(*journal, strict=True))
            reveals = [np.concatenate(cols[0], dtype=np.int64),
                       np.concatenate(cols[1], dtype=np.int64),
                       np.concatenate(cols[2], dtype=np.int32),
                       np.concatenate(cols[3], dtype=bool)]
        self._out, self._journal = [], []
        return Served(table, self._refusals, reveals, answered, ended)

    def _step_masks(self, batch: list[_Slot], starts: list[int], together: int,
                    marks: list[tuple[int, int, int, int]], masks: np.ndarray,
                    table: np.ndarray, refusals: list[str],
                    journal: list[tuple[Any, ...]]) -> None:
        """The round's usual advance_many(mask) rows (`batch`, their masks at `starts`, in all
        `together` entries), applied at once by the engine; their reply fields (rows of
        `table`), refusals and reveals put where the rows' own would have been, so that the
        reply is what applying them one by one in the round's order gives (each row is a
        distinct episode: no other row of the round touches its state). `marks`: after each
        other row, (rows of `batch` before it, then the lengths of out, refusals, journal). A
        row that the engine leaves (it would be refused) takes the per-episode path, for its
        words."""
        eps = [s.ep for s in batch]
        first = starts[0]
        if starts[-1] + eps[-1].num_opened - first == together:  # one after the other
            mask = masks[first : first + together]
        else:
            mask = np.concatenate([masks[a : a + e.num_opened]
                                   for a, e in zip(starts, eps, strict=True)])
        assert self.slab is not None and self.tables is not None
        st = advance_masks_once(self.slab, self.tables.steps, eps, [s.row for s in batch],
                                [s.offset for s in batch], mask)
        ns = st.n
        k = len(batch)
        # Where each row's reply, refusal and reveals go: the other rows before it moved them.
        # (Rows after the last of the batch's move nothing; neither do answers before it.)
        if marks:
            marks = [m for m in marks if m[0] < k and (m[0] or m[1] or m[2] or m[3])]
        if not marks:
            place: Any = slice(0, k)
            rpos = jpos = [0] * k
        else:
            place, rpos, jpos = [], [], []
            it = iter(marks)
            nxt = next(it, None)
            row = r = j = 0
            for i in range(k):
                while nxt is not None and nxt[0] <= i:
                    _, row, r, j = nxt
                    row //= REPLY_COLS
                    start_i = nxt[0]
                    nxt = next(it, None)
                    row -= start_i  # rows of `table` before this run of the batch's
                place.append(row + i)
                rpos.append(r)
                jpos.append(j)
        table[place, 1] = st.generated
        table[place, 2] = st.probes
        table[place, 3] = st.actions
        table[place, 4] = ns
        late: list[tuple[int, str]] = []  # (refusal position, message)
        if not journal and -1 not in ns:
            journal.append(st.reveals)  # (the usual round: nothing to interleave)
        else:
            # Each run of applied rows with no other reveals between them is one slice of
            # the engine's arrays; a left row's own reveals (none: a refusal) come between.
            rows_of = place if type(place) is list else list(range(k))
            pieces: list[tuple[int, tuple[Any, ...]]] = []
            lo = hi = 0
            run = -1
            for i, n in enumerate(ns):
                j = jpos[i]
                if n >= 0 and j == run:
                    hi += n
                    continue
                if hi > lo:
                    pieces.append((run, tuple(c[lo:hi] for c in st.reveals)))
                lo = hi
                if n >= 0:
                    run, hi = j, hi + n
                    continue
                run = -1
                own: list[tuple[Any, ...]] = []
                e = eps[i]
                late_row = self._one_mask(e, masks[starts[i] : starts[i] + e.num_opened],
                                          table[rows_of[i]], own)
                if late_row is not None:
                    late.append((rpos[i], late_row))
                pieces.extend((j, item) for item in own)
            if hi > lo:
                pieces.append((run, tuple(c[lo:hi] for c in st.reveals)))
            for j, item in reversed(pieces):
                journal.insert(j, item)
        for r, msg in reversed(late):
            refusals.insert(r, msg)

    def _one_mask(self, ep: Episode, which: np.ndarray, reply: np.ndarray,
                  journal: list[tuple[Any, ...]]) -> str | None:
        """serve()'s advance_many(mask) path for one row, its reply fields written to `reply`
        (its row of the table): its refusal's message, or None (its reveals appended to
        `journal`)."""
        try:
            _ADVANCE_MANY(ep, which, 1)
        except InvalidAction as x:
            reply[1:] = ep.generated_tokens, ep.num_probes, ep.num_actions, REFUSED
            return str(x)[:MAX_MESSAGE]
        except (TypeError, ValueError, OverflowError, IndexError) as x:
            raise ProtocolError("unreadable arguments for advance_many: "
                                f"{type(x).__name__}") from None
        n = ep.move_journal(journal)
        reply[1:] = ep.generated_tokens, ep.num_probes, ep.num_actions, n
        return None

    def _row(self, slot: int, ep: Episode, op: int, a: int, b: int) -> None:
        """A binary action row (its fields are int64 already) other than advance_many's (which
        serve() applies itself): the fields' own checks, then the engine's."""
        if op in _ROW_SCALAR:
            fields_ok = b == 0
            name, fn = _ROW_SCALAR[op]
            args: tuple[Any, ...] = (a,)
        elif op == OP_BRANCH_MANY:
            fields_ok = b == 0 or b == 1
            name, fn, args = "branch_many", _BRANCH_MANY, (a, b == 1)
        elif op == OP_BRANCH:
            fields_ok = (a == 0 or a == 1) and b == 0
            name, fn, args = "branch", _BRANCH, (a == 1,)
        elif op in (OP_PRUNE_MANY_MASK, OP_PRUNE_MANY_IDX):
            fields_ok = b == 0
            name, fn = "prune_many", _PRUNE_MANY
            args = (self._take(op == OP_PRUNE_MANY_MASK, a),) if fields_ok else ()
        elif op == OP_READ_NEW:
            fields_ok = a == 0 and b == 0
            name, fn, args = "read_new", _READ_NEW, ()
        else:
            raise ProtocolError("an unknown operation in a round's row")
        if not fields_ok:
            raise ProtocolError(f"malformed fields of a {name} row")
        self._apply(slot, ep, fn, name, args)

    def _take(self, mask: bool, n: int) -> np.ndarray:
        """The next n entries of the round's masks (a mask, as the controller passed it) or of
        its indices."""
        if mask:
            if not 0 <= n <= len(self._masks) - self._mpos:
                raise ProtocolError("a mask past the round's masks")
            out = self._masks[self._mpos : self._mpos + n]
            self._mpos += n
            return out
        if not 0 <= n <= len(self._indices) - self._pos:
            raise ProtocolError("a branch list past the round's indices")
        out = self._indices[self._pos : self._pos + n]
        self._pos += n
        return out

    def _apply(self, slot: int, ep: Episode, fn: Any, name: str, args: tuple[Any, ...]) -> None:
        """One action on the engine, and its reply row (and reveals, or its refusal)."""
        self.actions += 1
        try:
            fn(ep, *args)
        except InvalidAction as e:
            self._refusals.append(str(e)[:MAX_MESSAGE])
            self._out += (slot, ep.generated_tokens, ep.num_probes, ep.num_actions, REFUSED)
            return
        except (TypeError, ValueError, OverflowError, IndexError) as e:
            # Arguments the engine could not even read (a JSON value no controller can pass
            # through the client handle): the child is forging requests.
            raise ProtocolError(f"unreadable arguments for {name}: {type(e).__name__}") from None
        n = ep.move_journal(self._journal)
        self._out += (slot, ep.generated_tokens, ep.num_probes, ep.num_actions, n)

    def _message(self, slot: int, s: _Slot, m: Any, stop_on_error: bool) -> bool:
        """A JSON message [slot, op, args(, events)] (its slot the row's). Returns whether it
        was an action (answered) rather than the episode's end."""
        if type(m) is not list or not 3 <= len(m) <= 4:
            raise ProtocolError("a message is not [slot, op, args(, events)]")
        op, args = m[1], m[2]
        if type(m[0]) is not int or m[0] != slot:
            raise ProtocolError("a JSON message for another slot than its row's")
        if type(op) is not str or type(args) is not list:
            raise ProtocolError("bad op or arguments")
        if len(m) == 4:
            self._events(s, m[3])
        if op == "answer":
            self._answer(slot, s, args)
            return False
        if op == "error":
            self._error(slot, s, args, stop_on_error)
            return False
        self._act(slot, s, op, args)
        return True

    def _act(self, slot: int, s: _Slot, op: str, args: list[Any]) -> None:
        arity = ACTIONS.get(op)
        if arity is None or len(args) != arity:
            raise ProtocolError(f"unknown action or wrong number of arguments ({escape(op, 40)})")
        if op == "advance_many":
            which, times = self._branches(args[0]), args[1]
            if type(times) not in (int, bool, float):
                raise ProtocolError("advance_many's times is not a number")
            call: tuple[Any, ...] = (which, times)  # an empty mask stays a mask, as in-process
        elif op == "prune_many":
            call = (self._branches(args[0]),)
        elif op == "branch":
            call = (args[0],)  # the engine's to accept (a bool) or refuse, as in-process
        elif op == "branch_many":
            call = (_index(args[0], "an action argument"), args[1])
        elif op in _SCALAR_ARGS:
            call = (_index(args[0], "an action argument"),)
        else:
            call = ()
        self._apply(slot, s.ep, _METHOD[op], op, call)

    def _branches(self, w: Any) -> Any:
        """A JSON message's branch list: a JSON list, ["#", n] for the next n raw indices of
        the round, or ["?", n] for the next n entries of its raw masks."""
        if type(w) is list and len(w) == 2 and (w[0] == "#" or w[0] == "?"):
            if type(w[1]) is not int:
                raise ProtocolError("a branch list marker's count is not an integer")
            return self._take(w[0] == "?", w[1])
        return _which(w)

    def _answer(self, slot: int, s: _Slot, args: list[Any]) -> None:
        if len(args) != 1:
            raise ProtocolError("answer takes one value")
        v = args[0]
        if v is None:
            ans = NO_ANSWER
        elif type(v) is int and -(2**31) <= v < 2**31:
            ans = store_class(s.ep, v)
        else:
            raise ProtocolError("an answer that is not an int32 class or null")
        self._finish(slot, s, ans)

    def _error(self, slot: int, s: _Slot, args: list[Any], stop: bool) -> None:
        if (len(args) != 3 or args[0] not in EPISODE_ERRORS or type(args[1]) is not str
                or not (args[2] is None or type(args[2]) is str)):
            raise ProtocolError("an episode error is not [kind, message, traceback]")
        rec = {"kind": args[0], "store": self.parts[s.part].data.name, "question": s.question,
               "draw": s.draw, "step": s.ep.num_actions,
               "message": escape(args[1], MAX_MESSAGE)}
        tb = None if args[2] is None else escape(args[2], MAX_TRACEBACK)
        self.errors.append((self.offsets[s.part] + s.question, rec, tb))
        if stop:
            self.stop_starting = True
        self._finish(slot, s, NO_ANSWER)

    def _events(self, s: _Slot, events: Any) -> None:
        if not self.trace:
            # An untraced draw of a traced evaluation: the child sends events in every batch
            # (it is not told which draws are traced); they are dropped here, uncounted.
            return
        if type(events) is not list:
            raise ProtocolError("trace events are not a list")
        for e in events:
            if (type(e) is not list or len(e) != 2 or type(e[0]) is not str
                    or type(e[1]) is not dict):
                raise ProtocolError("a trace event is not [kind, data]")
            data, n = _clean_json(e[1], MAX_EVENT_ITEMS)
            self.budget.used += n
            if self.budget.used > self.budget.items:
                raise OutputLimit(f"trace events exceed the budget of {self.budget.items} "
                                  "JSON values and string characters")
            try:
                s.ep.trace(escape(e[0], MAX_KIND, newlines=False), **data)
            except TypeError:  # a key that collides with trace()'s own parameters
                raise ProtocolError("a trace event with a reserved key") from None

    def result(self, k: int) -> BlockResult:
        """Part k's outcome; errors in episode order, as in-process."""
        lo, hi = self.offsets[k], self.offsets[k + 1]
        errs = [rec for pos, rec, _ in sorted(self.errors, key=lambda x: x[0]) if lo <= pos < hi]
        traces = None if self.traces is None else [
            t for pos, t in sorted(self.traces, key=lambda x: x[0]) if lo <= pos < hi]
        return BlockResult(self.answers[k], self.tokens[k], self.probes[k], self.opened[k], errs,
                           traces)

    def first_error(self) -> tuple[dict[str, Any], str | None] | None:
        if not self.errors:
            return None
        _, rec, tb = min(self.errors, key=lambda x: x[0])
        return rec, tb
