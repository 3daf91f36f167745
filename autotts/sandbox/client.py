"""The episode handle a sandboxed controller programs against: the Episode API over a wire.

`ClientEpisode` has the methods and properties of `autotts.engine.Episode`, but holds only what the
episode has revealed: every action is sent to the trusted judge, which applies it to the real
episode and replies with what it revealed (branch, depth, answer, finished) and the public
counters. Property reads are local. A full read of this process's memory therefore finds nothing
that the controller was not shown and charged for.

The mirror follows the engine's rules for what the reply does not say: BRANCH opens branches at
depth 1, EXTEND adds one interval, PRUNE deactivates; depths at which answers are revealed, and
which branches finished, come from the judge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from autotts.engine import (
    NO_ANSWER,
    InvalidAction,
    as_count,
    as_flag,
    as_int,
    branch_indices,
    opened_index,
    probed_twice,
    running_index,
    running_indices,
    unpruned_index,
    unpruned_indices,
)
from autotts.sandbox.wire import (
    OP_ADVANCE,
    OP_ADVANCE_MANY_IDX,
    OP_ADVANCE_MANY_MASK,
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
)

# A request: (op, a, b, branch list, JSON message, trace events), one row of the round
# (autotts.sandbox.wire: OP_* codes) and what travels beside it: the raw branch list (int32
# indices or a bool mask) its op takes, or for op OP_JSON the message [op name, args] that a row
# cannot carry (an argument past int64). Arguments the engine would refuse for their type are
# refused here, with the engine's own functions (its words, its order). The reply:
# (message, generated, probes, actions) for a refusal, else (generated, probes, actions, branch,
# depth, answer, final) with the action's reveals (final None when none of them is a final).
Request = Callable[[tuple[Any, ...]], tuple[Any, ...]]
_I64 = 1 << 63
# The actions whose arguments the engine checks before it refuses a handle of an ended episode
_OP_NAMES = {OP_ADVANCE: "advance", OP_EXTEND: "extend", OP_READ: "read", OP_PROBE: "probe",
             OP_PRUNE: "prune", OP_ADVANCE_MANY_IDX: "advance_many",
             OP_ADVANCE_MANY_MASK: "advance_many", OP_PRUNE_MANY_IDX: "prune_many",
             OP_PRUNE_MANY_MASK: "prune_many"}


def _flag(probe: Any, what: str) -> bool:
    """A probe flag as the engine reads it (True, False or a numpy bool; anything else is its
    refusal, word for word: a flag that is merely truthy is no probe in-process either)."""
    return probe if probe is True or probe is False else as_flag(probe, what)


def _fast_indices(which: Any, opened: int) -> np.ndarray | None:
    """A mask (a copy, sent as raw bools: the judge hands the engine the same mask the
    controller passed, which the engine takes without a uniqueness check, or refuses as
    in-process) or a well-formed integer array (a copy as int32, sent raw), or None: anything
    else is read here by the engine's own rules (ClientEpisode._send_many)."""
    if isinstance(which, np.ndarray) and which.ndim == 1:
        # Any length: as a JSON list, an empty mask would become [] (no branches, accepted)
        # where the engine refuses a mask that is not one entry per opened branch.
        if which.dtype == bool:
            return which.copy()
        if which.dtype.kind in "iu" and (not len(which) or (
                which.min() >= 0 and which.max() < opened)):
            # A copy too: the round is sent once every episode of its group has run, and one
            # of them may write to this array (a scratch buffer the episodes share) before.
            return which.astype(np.int32)
    return None


def _positions(sent: np.ndarray) -> np.ndarray:
    return sent.nonzero()[0] if sent.dtype == bool else sent


class ClientEpisode:
    """One episode as the sandboxed controller sees it (same API as autotts.engine.Episode)."""

    __slots__ = ("_actions", "_budget", "_closed", "_delta", "_depth", "_events", "_finished",
                 "_gen", "_hist", "_kappa", "_latest", "_latest_v", "_n", "_no_answer", "_opened",
                 "_probes",
                 "_pruned", "_request", "_running", "_running_v")

    def __init__(self, request: Request, pool_size: int, delta: int, probe_cost: int,
                 budget: int | None, no_answer_class: int, tracing: bool,
                 mirror: tuple[np.ndarray, ...] | None = None) -> None:
        n = int(pool_size)
        self._request = request
        self._n = n
        self._delta = int(delta)
        self._kappa = int(probe_cost)
        self._budget = None if budget is None else int(budget)
        self._no_answer = int(no_answer_class)
        self._opened = 0
        if mirror is None:  # a handle of its own (a batch's come from its Mirrors)
            mirror = _fresh_rows(1, n)
            mirror = tuple(m[0] for m in mirror)
        self._attach(mirror)
        # Every reveal so far: the replies of the actions that revealed any, (generated, probes,
        # actions, reveals, start, end), each the entries start:end of its round's (branch,
        # depth, answer) arrays `reveals` (Mirrors.apply has written them to the mirror).
        self._hist: list[tuple[Any, ...]] = []
        self._gen = 0
        self._probes = 0
        self._actions = 0
        self._closed = False
        self._events: list[list[Any]] | None = [] if tracing else None

    # ---- copies would be free handles (as for the engine's episodes) ---------------------------

    def __copy__(self) -> None:
        raise InvalidAction("episode handles cannot be copied")

    def __deepcopy__(self, memo: Any) -> None:
        raise InvalidAction("episode handles cannot be copied")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise InvalidAction("episode handles cannot be copied")

    # ---- public facts and revealed state ------------------------------------------------------

    @property
    def pool_size(self) -> int:
        return self._n

    @property
    def delta(self) -> int:
        return self._delta

    @property
    def probe_cost(self) -> int:
        return self._kappa

    @property
    def no_answer_class(self) -> int:
        return self._no_answer

    @property
    def budget(self) -> int | None:
        return self._budget

    @property
    def tokens(self) -> int:
        return self._gen + self._kappa * self._probes

    @property
    def generated_tokens(self) -> int:
        return self._gen

    @property
    def num_probes(self) -> int:
        return self._probes

    @property
    def remaining_budget(self) -> int | None:
        return None if self._budget is None else self._budget - self.tokens

    @property
    def num_actions(self) -> int:
        return self._actions

    @property
    def num_opened(self) -> int:
        return self._opened

    @property
    def depths(self) -> np.ndarray:
        return self._depth[: self._opened].copy()

    @property
    def finished(self) -> np.ndarray:
        return self._finished[: self._opened].copy()

    @property
    def pruned(self) -> np.ndarray:
        return self._pruned[: self._opened].copy()

    @property
    def running(self) -> np.ndarray:
        return self._running_v.copy()

    @property
    def latest(self) -> np.ndarray:
        return self._latest_v.copy()

    @property
    def final_answers(self) -> np.ndarray:
        k = self._opened
        return np.where(self._finished[:k], self._latest[:k], NO_ANSWER).astype(np.int32)

    def depth(self, i: int) -> int:
        return int(self._depth[self._check_opened(i)])

    def is_finished(self, i: int) -> bool:
        return bool(self._finished[self._check_opened(i)])

    def is_pruned(self, i: int) -> bool:
        return bool(self._pruned[self._check_opened(i)])

    def latest_answer(self, i: int) -> int:
        return int(self._latest[self._check_opened(i)])

    def _attach(self, mirror: tuple[np.ndarray, ...]) -> None:
        """This episode's mirror: (depth, latest, finished, running, pruned), one entry per
        branch of its pool (rows of its batch's Mirrors, or arrays of its own)."""
        self._depth, self._latest, self._finished, self._running, self._pruned = mirror
        self._set_opened(self._opened)

    def _set_opened(self, k: int) -> None:
        """k branches opened; the opened part of the two arrays a controller reads most (its
        views, made once here rather than at every read)."""
        self._opened = k
        self._running_v = self._running[:k]
        self._latest_v = self._latest[:k]

    def _branch_history(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._hist:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
        b, d, a = (np.concatenate([h[3][k][h[4] : h[5]] for h in self._hist]) for k in range(3))
        self._hist = [(0, 0, 0, (b, d, a), 0, len(b))]
        mine = b == i
        d, a = d[mine], a[mine]
        order = np.argsort(d, kind="stable")
        return d[order], a[order]

    def history(self, i: int) -> np.ndarray:
        """Revealed answers of branch i in depth order (probes, then the final if finished)."""
        i = self._check_opened(i)
        if self._closed:  # as the engine's: it reads the (ended) question's table for them
            raise InvalidAction("the episode has ended")
        return self._branch_history(i)[1].astype(np.int32)

    def history_depths(self, i: int) -> np.ndarray:
        return self._branch_history(self._check_opened(i))[0].astype(np.int64)

    def trace(self, kind: str, **data: Any) -> None:
        if self._events is not None:
            self._events.append([str(kind), data])

    def close(self) -> None:
        self._closed = True


    # ---- actions ------------------------------------------------------------------------------

    def _send(self, op: int, a: int = 0, b: int = 0, arr: np.ndarray | None = None,
              js: list[Any] | None = None) -> None:
        if self._closed:
            self._refuse_ended(op, a, arr, js)
        events = None
        if self._events:
            events, self._events = self._events, []
        self._take(self._request((op, a, b, arr, js, events)))

    def _take(self, reply: tuple[Any, ...]) -> None:
        """The judge's reply to an action: a refusal (message, generated, probes, actions),
        raised with its counters; or the counters and where the action's reveals are among the
        round's (branch, depth, answer) arrays, which the mirror has already (Mirrors.apply)."""
        if len(reply) == 4:
            self._gen, self._probes, self._actions = reply[1], reply[2], reply[3]
            raise InvalidAction(reply[0])
        self._gen, self._probes, self._actions, _, start, end = reply
        if end != start:
            self._hist.append(reply)

    def _refuse_ended(self, op: int, a: int, arr: np.ndarray | None,
                      js: list[Any] | None) -> None:
        """An action on a handle kept past its episode: refused as in-process, where the
        engine checks the action's arguments over the episode's last state (which this mirror
        holds) before it says that the episode has ended, so that a controller that keeps a
        handle gets the same words and the same rows sandboxed (its episodes run one after
        another there too, with a window of one). The checks are the engine's own functions,
        as Episode applies them."""
        name = js[0] if op == OP_JSON else _OP_NAMES.get(op)
        opened, running, pruned = self._opened, self._running, self._pruned
        if name in ("advance", "extend", "read", "probe"):
            i = running_index(a if op != OP_JSON else js[1][0], f"{name}: i", opened, running,
                              pruned)
            if name == "probe":
                # The engine refuses a probe at a depth whose probe it revealed: here, the
                # last depth at which this branch revealed anything (a final ends it).
                depths = self._branch_history(i)[0]
                if len(depths) and depths[-1] == self._depth[i]:
                    raise probed_twice(i, int(self._depth[i]))
        elif name == "prune":
            unpruned_index(a if op != OP_JSON else js[1][0], "prune: i", opened, pruned)
        elif name == "advance_many":
            running_indices(arr, "advance_many: which", opened, running, pruned)
        elif name == "prune_many":
            unpruned_indices(arr, "prune_many: which", opened, pruned)
        raise InvalidAction("the episode has ended")

    def _send_index(self, op: int, name: str, i: int) -> None:
        """An action with one integer argument: a row, or past int64 a JSON message (for the
        engine to refuse, as in-process)."""
        if -_I64 <= i < _I64:
            self._send(op, i)
        else:
            self._send(OP_JSON, js=[name, [i]])

    def branch(self, probe: bool = False) -> int:
        probe = _flag(probe, "branch: probe")
        i = self._opened
        self._send(OP_BRANCH, 1 if probe else 0)
        self._set_opened(i + 1)
        if not self._finished[i]:
            self._depth[i] = 1
            self._running[i] = True
        return i

    def branch_many(self, k: int, probe: bool = False) -> np.ndarray:
        k = as_count(k, "branch_many: k", 0)
        probe = _flag(probe, "branch_many: probe")
        start = self._opened
        if -_I64 <= k < _I64:
            self._send(OP_BRANCH_MANY, k, 1 if probe else 0)
        else:
            self._send(OP_JSON, js=["branch_many", [k, bool(probe)]])
        idx = np.arange(start, start + k)
        self._set_opened(start + k)
        self._depth[idx] = np.maximum(self._depth[idx], 1)
        self._running[idx] = ~self._finished[idx]
        return idx

    def extend(self, i: int) -> int | None:
        i = as_int(i, "extend: i")
        d = int(self._depth[i]) if 0 <= i < self._n else 0
        self._send_index(OP_EXTEND, "extend", i)
        if self._finished[i]:
            return int(self._latest[i])
        self._depth[i] = d + 1
        return None

    def probe(self, i: int) -> int:
        i = as_int(i, "probe: i")
        self._send_index(OP_PROBE, "probe", i)
        return int(self._latest[i])

    def advance(self, i: int) -> int:
        i = as_int(i, "advance: i")
        self._send_index(OP_ADVANCE, "advance", i)
        return int(self._latest[i])

    def _send_many(self, name: str, which: Any, times: Any = None) -> np.ndarray:
        """advance_many / prune_many: a row with the branch list raw (int32 indices, or a mask
        of any length: as a JSON list an empty mask would become [], no branches, which the
        engine accepts where it refuses a mask that is not one entry per opened branch). Any
        other list is read here as the engine reads it (refused with its words, or indices
        that then go raw); a `times` past int64 goes as JSON. Returns the branches sent, as
        indices or a mask."""
        what = f"{name}: which"
        idx = _fast_indices(which, self._opened)
        if idx is None:
            # The engine's own reading of a branch list, over this mirror's opened branches
            # (which the replies keep exact): its refusal, in its words, or valid indices.
            idx = branch_indices(which, what, self._opened)
        many = name == "advance_many"
        if many and (type(times) is not int or times != 1):
            try:
                times = as_count(times, "advance_many: times", 1)
            except InvalidAction:
                # A refusal whatever the judge holds: the engine checks the branches first,
                # then `times` (a value JSON may not even carry), so the message is its.
                running_indices(idx, what, self._opened, self._running, self._pruned)
                raise
        if not many:
            times = 0
        mask = idx.dtype == bool
        if -_I64 <= times < _I64:
            op = (OP_ADVANCE_MANY_MASK if mask else OP_ADVANCE_MANY_IDX) if many else (
                OP_PRUNE_MANY_MASK if mask else OP_PRUNE_MANY_IDX)
            self._send(op, len(idx), times, idx)
        else:  # a raw list, and a `times` that only JSON carries
            self._send(OP_JSON, 0, 0, idx, [name, [["?" if mask else "#", len(idx)], times]])
        return idx

    def advance_many(self, which: Any, times: int = 1) -> np.ndarray:
        if (type(times) is int and times == 1 and isinstance(which, np.ndarray)
                and which.ndim == 1 and which.dtype == bool and not self._closed
                and not self._events):
            # The usual call (ep.advance_many(ep.running)): _send_many's path for a mask and
            # times 1, without its general checks or _send's (same row, same result; a
            # closed handle or trace events to send take the general path).
            mask = which.copy()
            self._take(self._request((OP_ADVANCE_MANY_MASK, len(mask), 1, mask, None, None)))
            return self._latest[mask.nonzero()[0]]
        idx = self._send_many("advance_many", which, times)
        return self._latest[_positions(idx)]

    def read(self, i: int) -> int:
        i = as_int(i, "read: i")
        self._send_index(OP_READ, "read", i)
        return int(self._latest[i])

    def read_new(self) -> int:
        i = self._opened
        self._send(OP_READ_NEW)
        self._set_opened(i + 1)
        return int(self._latest[i])

    def read_new_many(self, k: int) -> np.ndarray:
        k = as_count(k, "read_new_many: k", 0)
        start = self._opened
        self._send_index(OP_READ_NEW_MANY, "read_new_many", k)
        self._set_opened(start + k)
        return self._latest[start : start + k].copy()

    def prune(self, i: int) -> None:
        i = as_int(i, "prune: i")
        self._send_index(OP_PRUNE, "prune", i)
        self._pruned[i] = True
        self._running[i] = False

    def prune_many(self, which: Any) -> None:
        idx = _positions(self._send_many("prune_many", which))
        self._pruned[idx] = True
        self._running[idx] = False

    # ---- reads that name a branch -------------------------------------------------------------

    def _check_opened(self, i: Any) -> int:
        return opened_index(i, "the branch index", self._opened)


def _fresh_rows(rows: int, width: int) -> tuple[np.ndarray, ...]:
    """Mirror arrays of `rows` episodes of up to `width` branches, as nothing was revealed:
    (depth, latest, finished, running, pruned)."""
    latest = np.empty((rows, width), dtype=np.int32)  # np.full's Python wrapper: twice the time
    latest.fill(NO_ANSWER)
    return (np.zeros((rows, width), dtype=np.int64), latest, np.zeros((rows, width), dtype=bool),
            np.zeros((rows, width), dtype=bool), np.zeros((rows, width), dtype=bool))


class Mirrors:
    """The mirrors of a batch's live episodes, one row each of five shared arrays, so that a
    round's reveals are written to all of them with a few array operations (`apply`) instead
    of several per action. Each episode's handle holds views of its row, of its pool's length.
    A row is never given to another episode: when the rows run out (or a pool is wider than
    they are), the live episodes move to new arrays and the old ones are left to the handles
    of the episodes that have ended, so a handle kept past its episode reads its last state,
    which nothing writes again. A row holds only what the judge revealed to its episode."""

    def __init__(self) -> None:
        self._arrays = _fresh_rows(0, 0)
        self._flat = tuple(a.reshape(-1) for a in self._arrays)
        self._width = 0
        self._next = 0  # the next row no episode has had
        self._live: dict[int, tuple[ClientEpisode, int]] = {}  # slot -> (handle, row)
        self._base = np.zeros(0, dtype=np.intp)  # slot -> row * width (live slots only)

    def make_room(self, episodes: int, pool: int) -> None:
        """Room for `episodes` more episodes of up to `pool` branches (one allocation: a batch
        that starts its episodes at once allocates once; later ones as many rows again as
        there are live episodes, at least)."""
        if pool <= self._width and self._next + episodes <= len(self._arrays[0]):
            return
        live = list(self._live.items())
        width = max(self._width, pool)
        arrays = _fresh_rows(len(live) + max(episodes, len(live)), width)
        old, w = self._arrays, self._width
        for k, (slot, (ep, row)) in enumerate(live):  # the live episodes move to the new rows
            for new, was in zip(arrays, old, strict=True):
                new[k, :w] = was[row]
            ep._attach(tuple(a[k, : ep._n] for a in arrays))
            self._live[slot] = (ep, k)
            self._base[slot] = k * width
        self._arrays, self._width, self._next = arrays, width, len(live)
        self._flat = tuple(a.reshape(-1) for a in arrays)

    def open(self, slot: int, request: Request, pool_size: int, delta: int, probe_cost: int,
             budget: int | None, no_answer_class: int, tracing: bool) -> ClientEpisode:
        """The handle of a new episode, its mirror a fresh row (make_room first)."""
        n = int(pool_size)
        self.make_room(1, n)
        row = self._next
        self._next = row + 1
        d, a, f, r, p = self._arrays
        ep = ClientEpisode(request, n, delta, probe_cost, budget, no_answer_class, tracing,
                           (d[row, :n], a[row, :n], f[row, :n], r[row, :n], p[row, :n]))
        self._live[slot] = (ep, row)
        if slot >= len(self._base):
            self._base = np.concatenate([self._base, np.zeros(slot + 1, dtype=np.intp)])
        self._base[slot] = row * self._width
        return ep

    def end(self, slot: int) -> None:
        """The episode of `slot` has ended: its row stays as it is (its handle's mirror)."""
        del self._live[slot]

    def apply(self, slots: np.ndarray, counts: np.ndarray, branch: np.ndarray,
              depth: np.ndarray, answer: np.ndarray, final: np.ndarray) -> None:
        """A round's reveals, in row order (row k, of episode slots[k], takes the next
        counts[k] >= 0 of them), written to the episodes' mirrors as the engine's journal
        has them: in reveal order, so that the last write of a branch is its latest; a final
        finishes its branch."""
        if not len(branch):
            return
        at = np.repeat(self._base[slots], counts)
        at += branch
        d, a, f, r, _ = self._flat
        d[at] = depth
        a[at] = answer
        done = at[final]
        if len(done):
            f[done] = True
            r[done] = False


def pending_events(ep: ClientEpisode) -> list[list[Any]] | None:
    """Trace events of `ep` not yet sent (the scheduler sends them with the episode's end)."""
    events = ep._events or None
    if events:
        ep._events = []
    return events
