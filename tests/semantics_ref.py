"""A second, deliberately plain implementation of the replay semantics, written from
docs/semantics.md and nothing else (no numpy layout, no shared code with autotts.engine). The
differential fuzz test (tests/test_semantics_fuzz.py) runs it in lockstep with the engine.

Refusals raise `Refused`; the message is not part of the contract (only that nothing changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class Refused(Exception):
    pass


@dataclass
class RefBranch:
    probes: list[int]  # store classes, one per interval (L = len(probes))
    tokens: int  # T
    final: int  # store class of the final answer


def _int(x: Any) -> int:
    if type(x) is int:
        return x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iu":
        return int(x)
    raise Refused("not an integer")


def _flag(x: Any) -> bool:
    if type(x) is bool or type(x) is np.bool_:
        return bool(x)
    raise Refused("not a flag")


class RefEpisode:
    def __init__(self, branches: list[RefBranch], order: list[int], delta: int, kappa: int,
                 budget: int | None, err_class: int) -> None:
        self.pool = [branches[b] for b in order]
        self.delta, self.kappa, self.budget, self.err = delta, kappa, budget, err_class
        self.opened = 0
        self.depth: list[int] = []
        self.finished: list[bool] = []
        self.pruned: list[bool] = []
        self.revealed: list[dict[int, int]] = []  # per branch: step -> episode id
        self.latest: list[int] = []
        self.gen = self.probes = self.actions = 0
        self.ids: dict[int, int] = {}
        self.inv = [-1]  # id -> store class; id 0 is the no-answer class once revealed
        self.journal: list[tuple[int, int, int, bool]] = []

    # ---- state --------------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        return self.gen + self.kappa * self.probes

    def running(self, i: int) -> bool:
        return not self.finished[i] and not self.pruned[i]

    def history(self, i: int) -> list[int]:
        return [self.revealed[i][k] for k in sorted(self.revealed[i])]

    def store_class(self, a: Any) -> int:
        if type(a) is not int and not isinstance(a, np.integer):
            return -1
        return self.inv[int(a)] if 0 <= int(a) < len(self.inv) else -1

    # ---- rules --------------------------------------------------------------------------------

    def _admit(self) -> None:
        if self.budget is not None and self.tokens >= self.budget:
            raise Refused("budget spent")

    def _cost(self, i: int, step: int) -> int:
        br = self.pool[i]
        n = len(br.probes)
        return self.delta if step <= n else max(0, br.tokens - n * self.delta)

    def _id(self, s: int) -> int:
        if s < 0:
            return -1
        if s not in self.ids:
            if s == self.err:
                self.ids[s] = 0
                self.inv[0] = s
            else:
                self.ids[s] = len(self.inv)
                self.inv.append(s)
        return self.ids[s]

    def _reveal(self, i: int, step: int) -> int:
        br = self.pool[i]
        final = step == len(br.probes) + 1
        a = self._id(br.final if final else br.probes[step - 1])
        self.revealed[i][step] = a
        self.latest[i] = a
        if final:
            self.finished[i] = True
        self.journal.append((i, step, a, final))
        return a

    def _open(self) -> int:
        i = self.opened
        self.opened += 1
        self.depth.append(0)
        self.finished.append(False)
        self.pruned.append(False)
        self.revealed.append({})
        self.latest.append(-1)
        return i

    def _step(self, i: int, probe: bool) -> int | None:
        """Generate the next step of branch i; probe it if asked (a finishing step reveals the
        final instead, with no probe charged)."""
        k = self.depth[i] + 1
        self.gen += self._cost(i, k)
        self.depth[i] = k
        if k == len(self.pool[i].probes) + 1:
            return self._reveal(i, k)
        if probe:
            self.probes += 1
            return self._reveal(i, k)
        return None

    def _which(self, which: Any) -> list[int]:
        if type(which) is bool or type(which) is np.bool_:
            raise Refused("a flag is not a branch list")
        items = which.tolist() if isinstance(which, np.ndarray) else which
        if isinstance(items, np.integer):
            items = int(items)
        if type(items) is int:
            items = [items]
        if not isinstance(items, list | tuple):
            raise Refused("not a list")
        if items and all(type(x) is bool for x in items):
            if len(items) != self.opened:
                raise Refused("mask length")
            return [j for j, x in enumerate(items) if x]
        if items and any(type(x) is bool for x in items):
            items = [int(x) for x in items]  # numpy would make a mixed list integers
        out = []
        for x in items:
            if isinstance(x, np.integer):
                x = int(x)
            if type(x) is not int:
                raise Refused("not an integer")
            if not 0 <= x < self.opened:
                raise Refused("out of range")
            out.append(x)
        if len(set(out)) != len(out):
            raise Refused("twice")
        return out

    def _check_open(self, i: Any) -> int:
        i = _int(i)
        if not 0 <= i < self.opened:
            raise Refused("not open")
        return i

    def _check_running(self, i: Any) -> int:
        i = self._check_open(i)
        if not self.running(i):
            raise Refused("not running")
        return i

    # ---- actions ------------------------------------------------------------------------------

    def branch(self, probe: Any = False) -> int:
        probe = _flag(probe)
        self._admit()
        if self.opened >= len(self.pool):
            raise Refused("pool")
        i = self._open()
        self._step(i, probe)
        self.actions += 1
        return i

    def branch_many(self, k: Any, probe: Any = False) -> list[int]:
        k, probe = _int(k), _flag(probe)
        if k < 0:
            raise Refused("negative")
        self._admit()
        if self.opened + k > len(self.pool):
            raise Refused("pool")
        out = []
        for _ in range(k):
            i = self._open()
            self._step(i, probe)
            out.append(i)
        self.actions += 1
        return out

    def extend(self, i: Any) -> int | None:
        i = self._check_running(i)
        self._admit()
        self.actions += 1
        return self._step(i, False)

    def probe(self, i: Any) -> int:
        i = self._check_running(i)
        k = self.depth[i]
        if k in self.revealed[i]:
            raise Refused("twice")
        self._admit()
        self.actions += 1
        self.probes += 1
        return self._reveal(i, k)

    def advance(self, i: Any) -> int:
        i = self._check_running(i)
        self._admit()
        self.actions += 1
        a = self._step(i, True)
        assert a is not None
        return a

    def advance_many(self, which: Any, times: Any = 1) -> list[int]:
        idx = self._which(which)
        if any(not self.running(j) for j in idx):
            raise Refused("not running")
        times = _int(times)
        if times < 1:
            raise Refused("times")
        self._admit()
        self.actions += 1
        for _ in range(times):
            live = [j for j in idx if not self.finished[j]]
            if not live:
                break  # (times may be huge)
            for j in live:
                self._step(j, True)
        return [self.latest[j] for j in idx]

    def read(self, i: Any) -> int:
        i = self._check_running(i)
        self._admit()
        self.actions += 1
        while not self.finished[i]:
            a = self._step(i, False)  # READ charges what stepping would, and no κ
        return a  # type: ignore[return-value]

    def read_new(self) -> int:
        self._admit()
        if self.opened >= len(self.pool):
            raise Refused("pool")
        self.actions += 1
        return self._read_whole(self._open())

    def read_new_many(self, k: Any) -> list[int]:
        k = _int(k)
        if k < 0:
            raise Refused("negative")
        self._admit()
        if self.opened + k > len(self.pool):
            raise Refused("pool")
        self.actions += 1
        return [self._read_whole(self._open()) for _ in range(k)]

    def _read_whole(self, i: int) -> int:
        br = self.pool[i]
        self.gen += br.tokens  # READ_NEW costs T, whatever the intervals would have cost
        self.depth[i] = len(br.probes) + 1
        return self._reveal(i, self.depth[i])

    def prune(self, i: Any) -> None:
        i = self._check_open(i)
        if self.pruned[i]:
            raise Refused("twice")
        self._admit()
        self.actions += 1
        self.pruned[i] = True

    def prune_many(self, which: Any) -> None:
        idx = self._which(which)
        if any(self.pruned[j] for j in idx):
            raise Refused("twice")
        self._admit()
        self.actions += 1
        for j in idx:
            self.pruned[j] = True
