"""The replay engine (DESIGN §3): the one implementation of the replay semantics.

`Question` lays one question's branches out for O(1) transitions; `Episode` is the handle a
controller programs against. The Gymnasium env, the evaluator and the sandbox all drive `Episode`.

Semantics, per branch b with L_b probes ω(b,1..L_b), final answer y_b and T_b tokens:
  * a branch has L_b + 1 generation steps. Step k ≤ L_b generates interval k (costs Δ) and makes
    ω(b,k) probe-able; step L_b + 1 finishes the branch, reveals y_b and costs max(0, T_b − L_b·Δ).
  * PROBE reveals ω(b, depth) once per depth and costs κ (probe_cost).
  * READ_NEW opens the next branch of the draw and runs it whole for T_b tokens, revealing only
    y_b; READ(i) runs an open branch to its end for what stepping it would cost.
  * a budget B (optional) makes every action that would take the cost past B inadmissible.

Information hiding holds by construction: nothing here knows the gold answer (scoring happens in the
caller), and unrevealed probes and finals live only behind underscore names, which sandboxed code
cannot touch. Public views return copies, so a controller cannot write into the engine's state.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from autotts.answers import NO_ANSWER  # also "nothing revealed yet" here
from autotts.store import ReplayData


class InvalidAction(Exception):
    """An action the replay semantics do not admit (the evaluator adds store/question/draw)."""


class _NoCopy:
    """Copies of a question or an episode would be free handles on unrevealed data."""

    __slots__ = ()

    def __copy__(self) -> None:
        raise TypeError(f"{type(self).__name__} cannot be copied")

    def __deepcopy__(self, memo: Any) -> None:
        raise TypeError(f"{type(self).__name__} cannot be copied")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _Ended:
    """Stands in for an ended episode's question: any further action raises."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        raise InvalidAction("the episode has ended")


class Question(_NoCopy):
    """Gold-free replay data of one question: per branch, what each generation step reveals and
    costs. reveal[b, k] / step_cost[b, k] describe step k+1 (0-based k); last[b] = L_b."""

    __slots__ = (
        "_cost_flat",
        "_cum",
        "_last",
        "_reveal",
        "_reveal_flat",
        "_step_cost",
        "_tokens",
        "_width",
        "delta",
        "no_answer_class",
        "num_branches",
    )

    def __init__(self, data: ReplayData, q: int) -> None:
        r0, r1 = int(data.branch_offsets[q]), int(data.branch_offsets[q + 1])
        p_off = data.probe_offsets[r0 : r1 + 1]
        lengths = np.diff(p_off).astype(np.int64)
        m = r1 - r0
        steps = int(lengths.max()) + 1
        rows = np.repeat(np.arange(m), lengths)
        cols = np.arange(int(p_off[-1] - p_off[0])) - np.repeat(p_off[:-1] - p_off[0], lengths)
        delta = int(data.delta)
        tokens = data.tokens[r0:r1].astype(np.int64)
        reveal = np.full((m, steps), NO_ANSWER, dtype=np.int32)
        reveal[rows, cols] = data.probe_class[p_off[0] : p_off[-1]]
        reveal[np.arange(m), lengths] = data.final_class[r0:r1]
        step_cost = np.zeros((m, steps), dtype=np.int64)
        step_cost[rows, cols] = delta
        step_cost[np.arange(m), lengths] = np.maximum(0, tokens - lengths * delta)
        cum = np.zeros((m, steps + 1), dtype=np.int64)
        np.cumsum(step_cost, axis=1, out=cum[:, 1:])
        self.num_branches = m
        self.delta = delta
        err = data.err_class
        self.no_answer_class = int(err[q]) if err is not None else NO_ANSWER
        self._reveal = reveal
        self._step_cost = step_cost
        self._cum = cum
        self._last = lengths
        self._tokens = tokens
        # Flat views: one gather per batch of (branch, step) pairs instead of 2-D fancy indexing.
        self._width = steps
        self._reveal_flat = reveal.reshape(-1)
        self._cost_flat = step_cost.reshape(-1)


def _as_index(i: Any) -> int:
    if isinstance(i, bool):
        raise InvalidAction(f"branch index must be an integer, got {i!r}")
    try:
        return operator.index(i)
    except TypeError:
        raise InvalidAction(f"branch index must be an integer, got {i!r}") from None


class Episode(_NoCopy):
    """One replay of one question under one draw. Branches are numbered 0, 1, ... in the order they
    were opened; BRANCH and READ_NEW take the next branch of the draw's order.

    Actions (each raises InvalidAction if the semantics do not admit it):
      branch(probe=False) -> int            open the next branch (first interval); index
      branch_many(k, probe=False) -> array  open k branches at once; their indices
      extend(i) -> int | None               CONTINUE: one more interval; y_b if that finished it
      probe(i) -> int                       reveal ω(i, depth), once per depth
      advance(i) -> int                     CONTINUE then PROBE; the probe (or y_b if it finished)
      advance_many(which, times=1) -> array advance several branches (indices or a bool mask)
      read(i) -> int                        run open branch i to its end; y_b
      read_new() -> int                     open the next branch and run it whole; y_b
      read_new_many(k) -> array             read k new branches whole; their finals
      prune(i) / prune_many(which)          deactivate; depth and revealed answers stay
    A controller ANSWERs by returning an answer class from its run(ep).

    Revealed state (copies): num_opened, depths, finished, pruned, running, latest, final_answers,
    history(i); depth(i), is_finished(i), is_pruned(i), latest_answer(i); cost: tokens (generated +
    κ·probes), generated_tokens, num_probes, budget, remaining_budget; public facts: pool_size,
    delta, probe_cost, no_answer_class (the 'ERR' class, -1 if none). trace(kind,
    **data) records an event when tracing is on and costs nothing otherwise.
    """

    __slots__ = (
        "_actions",
        "_b",
        "_budget",
        "_delta",
        "_depth",
        "_finished",
        "_gen",
        "_kappa",
        "_latest",
        "_n",
        "_no_answer",
        "_opened",
        "_probes",
        "_pruned",
        "_q",
        "_running",
        "_seen",
        "_seen_flat",
        "_trace",
    )

    def __init__(
        self,
        question: Question,
        order: np.ndarray,
        *,
        probe_cost: int = 0,
        budget: int | None = None,
        trace: bool = False,
    ) -> None:
        n = len(order)
        self._q = question
        self._delta = question.delta
        self._no_answer = question.no_answer_class
        self._b = np.asarray(order, dtype=np.int64)
        self._n = n
        self._kappa = int(probe_cost)
        self._budget = None if budget is None else int(budget)
        self._depth = np.zeros(n, dtype=np.int64)
        self._finished = np.zeros(n, dtype=bool)
        self._pruned = np.zeros(n, dtype=bool)
        self._latest = np.full(n, NO_ANSWER, dtype=np.int32)
        self._running = np.zeros(n, dtype=bool)  # opened, not pruned, not finished
        self._seen = np.zeros((n, question._width), dtype=bool)
        self._seen_flat = self._seen.reshape(-1)
        self._opened = 0
        self._gen = 0
        self._probes = 0
        self._actions = 0
        self._trace: list[dict[str, Any]] | None = [] if trace else None

    # ---- public facts and revealed state -----------------------------------------------------

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
        """The class of the model's "no answer" output ('ERR') in exact stores, else -1. It is an
        ordinary vote in the published baselines; controllers may choose to ignore it."""
        return self._no_answer

    @property
    def budget(self) -> int | None:
        return self._budget

    @property
    def tokens(self) -> int:
        """Cost so far: generated tokens + κ · revealed probes."""
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
        """Opened, not pruned and not finished: the branches that can still be advanced."""
        return self._running[: self._opened].copy()

    @property
    def latest(self) -> np.ndarray:
        """Latest revealed answer of each opened branch (probe or final), -1 if none."""
        return self._latest[: self._opened].copy()

    @property
    def final_answers(self) -> np.ndarray:
        """Final answer of each opened branch, -1 while it is unfinished."""
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

    def history(self, i: int) -> np.ndarray:
        """Revealed answers of branch i in depth order (probes, then the final if finished)."""
        i = self._check_opened(i)
        return self._q._reveal[self._b[i], self._seen[i]].copy()

    def history_depths(self, i: int) -> np.ndarray:
        """The depths (1-based step numbers) at which history(i)'s answers were revealed."""
        i = self._check_opened(i)
        return np.flatnonzero(self._seen[i]) + 1

    def trace(self, kind: str, **data: Any) -> None:
        if self._trace is not None:
            self._trace.append({"t": self._actions, "ev": str(kind), **data})

    def trace_enabled(self) -> bool:
        return self._trace is not None

    def close(self) -> None:
        """End the episode: a handle kept past its episode can no longer act or read branches."""
        if not isinstance(self._q, _Ended):
            self._q = _Ended()  # type: ignore[assignment]

    # ---- actions ------------------------------------------------------------------------------

    def branch(self, probe: bool = False) -> int:
        i = self._opened
        if i >= self._n:
            raise InvalidAction(f"BRANCH past the pool: all {self._n} branches are open")
        q, b = self._q, self._b[i]
        cost = int(q._step_cost[b, 0])
        done = q._last[b] == 0
        self._charge(cost, 1 if probe and not done else 0)
        self._opened = i + 1
        self._depth[i] = 1
        self._running[i] = True
        if done:
            self._reveal_final(i, b, 0)
        elif probe:
            self._seen[i, 0] = True
            self._latest[i] = q._reveal[b, 0]
            self._probes += 1
        self._log("branch", i)
        return i

    def branch_many(self, k: int, probe: bool = False) -> np.ndarray:
        k = _as_index(k)
        start = self._opened
        if k < 0 or start + k > self._n:
            raise InvalidAction(f"BRANCH ×{k} past the pool: {self._n - start} branches left")
        idx = np.arange(start, start + k)
        if k == 0:
            return idx
        q, b = self._q, self._b[idx]
        done = q._last[b] == 0
        self._charge(int(q._step_cost[b, 0].sum()), int(k - done.sum()) if probe else 0)
        self._opened = start + k
        self._depth[idx] = 1
        self._running[idx] = True
        if probe:
            self._seen[idx, 0] = True
            self._latest[idx] = q._reveal[b, 0]
            self._probes += int(k - done.sum())
        if done.any():
            for i in idx[done]:
                self._reveal_final(int(i), self._b[i], 0)
        self._log("branch_many", start, k=int(k))
        return idx

    def extend(self, i: int) -> int | None:
        i = self._check_running(i)
        q, b, d = self._q, self._b[i], self._depth[i]
        self._charge(int(q._step_cost[b, d]), 0)
        self._depth[i] = d + 1
        if d == q._last[b]:
            self._reveal_final(i, b, d)
            self._log("extend", i)
            return int(self._latest[i])
        self._log("extend", i)
        return None

    def probe(self, i: int) -> int:
        i = self._check_running(i)
        d = self._depth[i] - 1
        if self._seen[i, d]:
            raise InvalidAction(f"PROBE of branch {i} twice at depth {d + 1}")
        self._charge(0, 1)
        ans = self._q._reveal[self._b[i], d]
        self._seen[i, d] = True
        self._latest[i] = ans
        self._probes += 1
        self._log("probe", i)
        return int(ans)

    def advance(self, i: int) -> int:
        i = self._check_running(i)
        q, b, d = self._q, self._b[i], self._depth[i]
        done = d == q._last[b]
        self._charge(int(q._step_cost[b, d]), 0 if done else 1)
        self._depth[i] = d + 1
        if done:
            self._reveal_final(i, b, d)
        else:
            self._seen[i, d] = True
            self._latest[i] = q._reveal[b, d]
            self._probes += 1
        self._log("advance", i)
        return int(self._latest[i])

    def advance_many(self, which: Any, times: int = 1) -> np.ndarray:
        """ADVANCE each given branch `times` times (a branch that finishes stops there). Returns the
        latest answer of each given branch afterwards. All-or-nothing: if the whole call does not
        fit the budget, nothing happens and InvalidAction is raised."""
        idx = self._check_running_many(which)
        if times != 1:
            times = _as_index(times)
            if times < 1:
                raise InvalidAction(f"advance_many needs times >= 1, got {times}")
        q = self._q
        width = q._width
        b, d = self._b[idx], self._depth[idx]
        if self._budget is not None:
            self._charge_burst(b, d, times)
        self._actions += 1
        last = q._last[b]
        cur = idx
        for _ in range(times):
            flat = b * width + d
            fin = d == last
            self._gen += int(q._cost_flat[flat].sum())
            self._seen_flat[cur * width + d] = True
            self._latest[cur] = q._reveal_flat[flat]
            d = d + 1
            self._depth[cur] = d
            n_fin = int(np.count_nonzero(fin))
            self._probes += len(cur) - n_fin
            if n_fin:
                done = cur[fin]
                self._finished[done] = True
                self._running[done] = False
                keep = ~fin
                cur, b, d, last = cur[keep], b[keep], d[keep], last[keep]
                if len(cur) == 0:
                    break
        if self._trace is not None:
            self._log("advance_many", -1, n=len(idx), times=times, idx=idx.tolist())
        return self._latest[idx]

    def read(self, i: int) -> int:
        i = self._check_running(i)
        q, b, d = self._q, self._b[i], self._depth[i]
        self._charge(int(q._cum[b, -1] - q._cum[b, d]), 0)
        last = q._last[b]
        self._depth[i] = last + 1
        self._reveal_final(i, b, last)
        self._log("read", i)
        return int(self._latest[i])

    def read_new(self) -> int:
        i = self._opened
        if i >= self._n:
            raise InvalidAction(f"READ_NEW past the pool: all {self._n} branches are open")
        q, b = self._q, self._b[i]
        self._charge(int(q._tokens[b]), 0)
        self._opened = i + 1
        last = q._last[b]
        self._depth[i] = last + 1
        self._reveal_final(i, b, last)
        self._log("read_new", i)
        return int(self._latest[i])

    def read_new_many(self, k: int) -> np.ndarray:
        k = _as_index(k)
        start = self._opened
        if k < 0 or start + k > self._n:
            raise InvalidAction(f"READ_NEW ×{k} past the pool: {self._n - start} branches left")
        idx = np.arange(start, start + k)
        q, b = self._q, self._b[idx]
        self._charge(int(q._tokens[b].sum()), 0)
        self._opened = start + k
        last = q._last[b]
        self._depth[idx] = last + 1
        self._seen[idx, last] = True
        self._latest[idx] = q._reveal[b, last]
        self._finished[idx] = True
        self._log("read_new_many", start, k=int(k))
        return self._latest[idx].copy()

    def prune(self, i: int) -> None:
        i = self._check_opened(i)
        if self._pruned[i]:
            raise InvalidAction(f"PRUNE of branch {i}, which is already pruned")
        self._pruned[i] = True
        self._running[i] = False
        self._actions += 1
        self._log("prune", i)

    def prune_many(self, which: Any) -> None:
        idx = self._indices(which)
        if self._pruned[idx].any():
            raise InvalidAction(f"PRUNE of already pruned branch {int(idx[self._pruned[idx]][0])}")
        self._pruned[idx] = True
        self._running[idx] = False
        self._actions += 1
        self._log("prune_many", -1, n=len(idx), idx=idx.tolist())

    # ---- internals ----------------------------------------------------------------------------

    def _charge(self, tokens: int, probes: int) -> None:
        self._actions += 1
        if self._budget is not None:
            after = self._gen + tokens + self._kappa * (self._probes + probes)
            if after > self._budget:
                raise InvalidAction(f"over budget: {after} > {self._budget} tokens")
        self._gen += tokens

    def _charge_burst(self, b: np.ndarray, d: np.ndarray, times: int) -> None:
        q = self._q
        end = np.minimum(d + times, q._last[b] + 1)
        tokens = int((q._cum[b, end] - q._cum[b, d]).sum())
        probes = int((np.minimum(end, q._last[b]) - d).clip(min=0).sum())
        after = self._gen + tokens + self._kappa * (self._probes + probes)
        if after > self._budget:  # type: ignore[operator]
            raise InvalidAction(f"over budget: {after} > {self._budget} tokens")

    def _reveal_final(self, i: int, b: Any, step: Any) -> None:
        self._seen[i, step] = True
        self._latest[i] = self._q._reveal[b, step]
        self._finished[i] = True
        self._running[i] = False

    def _check_opened(self, i: Any) -> int:
        i = _as_index(i)
        if not 0 <= i < self._opened:
            raise InvalidAction(f"branch {i} is not open ({self._opened} opened)")
        return i

    def _check_running(self, i: Any) -> int:
        i = self._check_opened(i)
        if self._pruned[i]:
            raise InvalidAction(f"branch {i} is pruned")
        if self._finished[i]:
            raise InvalidAction(f"branch {i} is finished")
        return i

    def _indices(self, which: Any) -> np.ndarray:
        arr = np.asarray(which)
        if arr.dtype == bool:
            if arr.ndim != 1 or len(arr) != self._opened:
                raise InvalidAction(
                    f"a branch mask must have one entry per opened branch ({self._opened})"
                )
            return np.flatnonzero(arr)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or (len(arr) and arr.dtype.kind not in "iu"):
            raise InvalidAction(f"branch indices must be integers, got {which!r:.80}")
        idx = arr.astype(np.int64, copy=False)
        if len(idx) and (idx.min() < 0 or idx.max() >= self._opened):
            raise InvalidAction(f"branch index out of range ({self._opened} opened)")
        if len(idx) > 1 and len(np.unique(idx)) != len(idx):
            raise InvalidAction("a branch appears twice in one call")
        return idx

    def _check_running_many(self, which: Any) -> np.ndarray:
        if (
            isinstance(which, np.ndarray)
            and which.dtype == bool
            and which.shape == (self._opened,)
        ):
            idx = which.nonzero()[0]  # a mask cannot name a branch twice: no uniqueness check
        else:
            idx = self._indices(which)
        ok = self._running[idx]
        if not ok.all():
            j = int(idx[~ok][0])
            raise InvalidAction(f"branch {j} is {'pruned' if self._pruned[j] else 'finished'}")
        return idx

    def _log(self, action: str, i: int, **data: Any) -> None:
        if self._trace is not None:
            ev: dict[str, Any] = {"t": self._actions, "ev": action, "tokens": self.tokens}
            if i >= 0:
                ev["i"] = int(i)
                ev["ans"] = int(self._latest[i])
            ev.update(data)
            self._trace.append(ev)

    def _events(self) -> list[dict[str, Any]]:
        return list(self._trace or [])
