"""Episodes in lockstep: one handle over many episodes of one store (draws × questions).

`EpisodeBatch` speaks the episode handle's vocabulary (docs/semantics.md) for E episodes at once:
each action takes a per-episode argument (a count, or a [E, N] branch mask) and an optional set of
acting `rows`, and does for every acting episode exactly what the same action does on that
episode's own `Episode`; the per-step work is then one numpy operation over all of them instead of
one per episode. It exists for speed only: `autotts.engine.Episode` stays the reference, and
tests/test_batch.py runs the two in lockstep (every action, probe cost, budgets, refusals, the id
numbering and the id -> store class map) so that they cannot drift apart. See docs/batch.md.

Refusals are per episode: an action the semantics refuse for an episode (the budget is spent, a
branch past the pool, a mask naming a branch that cannot be stepped) ends that episode as the
per-episode controller's run would end on the InvalidAction, with the same message; the others
act. Ended episodes leave `live` and ignore later actions.

Only the trusted side (autotts.units) builds a batch; the sandbox never does.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from autotts.answers import NO_ANSWER
from autotts.engine import NO_ANSWER_ID, InvalidAction, Question, as_count, as_flag

_UNSET = np.iinfo(np.int64).max
_UNSEEN = -2  # _id_of_class of a class its episode has not revealed yet


class EpisodeBatch:
    """E episodes of one store, each a (question, draw order) pair, advanced together.

    Shapes: per-episode quantities are [E] arrays; per-branch ones are [E, N] with N the largest
    pool of the batch, column j being branch j of the episode in opening order (columns at or past
    `num_opened[e]` are unopened: depth 0, not running, latest -1). Per-branch state (finished,
    pruned, running, latest) is a live read-only view: it changes with later actions (depths is
    computed per read).

    Actions (rows: a bool [E] mask or episode indices, default every live episode):
      read_new(rows) -> [E]                    READ_NEW; the final (-1 for rows that did not act)
      read_new_many(k, rows) -> [E, max k]     k: an int or an [E] array; finals, -1 padded
      branch_many(k, probe=False, rows)        BRANCH ×k (+PROBE)
      advance_many(which, times=1, rows)       returns latest [E, N]
      prune_many(which, rows)
    `which` is a bool branch mask: [E, N] with rows None or a bool [E] mask, or one row per acting
    episode, [len(rows), N], with rows given as ascending episode indices (the compact form, for
    controllers that keep only their unfinished episodes); it may have fewer than N columns (the
    columns past its last are not selected).
    An acting row with an empty selection takes an admitted no-op, as on Episode.
    """

    def __init__(
        self,
        questions: list[Question],
        orders: list[np.ndarray],
        *,
        probe_cost: int = 0,
        budget: int | None = None,
    ) -> None:
        e_count = len(orders)
        if e_count != len(questions) or e_count == 0:
            raise ValueError("a batch needs one question per order, and at least one episode")
        # One flat table of every distinct question: row g of the flat layout starts at base[q].
        uniq: dict[int, int] = {}
        qs: list[Question] = []
        at: list[int] = []  # each episode's question, as its index in qs
        for q in questions:
            i = uniq.get(id(q))
            if i is None:
                i = uniq[id(q)] = len(qs)
                qs.append(q)
            at.append(i)
        lay = [q.layout() for q in qs]
        widths = np.array([t.width for t in lay], dtype=np.int64)
        sizes = np.array([q.num_branches for q in qs], dtype=np.int64)
        cell_base = np.concatenate([[0], np.cumsum(sizes * widths)[:-1]])
        branch_base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._lay = lay
        self._reveal_flat = np.concatenate([t.reveal_flat for t in lay])
        # Per global branch (row g of the flat layout): its first cell, last step index, tokens.
        # A column's own cells are looked up when it opens: most columns of a batch never do.
        self._first_g = np.concatenate([cell_base[i] + np.arange(sizes[i]) * widths[i]
                                        for i in range(len(qs))])
        self._last_g = np.concatenate([t.last for t in lay]).astype(np.int64)
        self._tokens_g = np.concatenate([t.tokens for t in lay])
        qi = np.array(at, dtype=np.int64)
        pools = np.fromiter(map(len, orders), dtype=np.int64, count=e_count)
        n = int(pools.max())
        flat = np.concatenate(orders).astype(np.int64, copy=False)
        if len(flat) == e_count * n:  # every pool full width (the common case): no mask
            self._order_f = flat
        else:
            self._order_f = np.zeros(e_count * n, dtype=np.int64)
            self._order_f[np.flatnonzero(np.arange(n) < pools[:, None])] = flat
        # (episode, column) -> its global branch: the episode's base + its order's entry, looked
        # up when the column opens (a per-column array would be built for columns never opened)
        self._branch_base_e = branch_base[qi]
        self._err_class = np.array([q.no_answer_class for q in qs], dtype=np.int64)[qi]
        self._delta_e = np.array([q.delta for q in qs], dtype=np.int64)[qi]
        self._size = e_count
        self._width = n
        self._pool = pools
        self._delta = qs[0].delta
        self._probe_cost = int(probe_cost)
        self._budget = None if budget is None else int(budget)
        # An opened branch's next table cell (its first cell + its depth): a step reads and
        # writes one array instead of the first cell and the depth.
        self._cursor = np.zeros((e_count, n), dtype=np.int64)
        self._finished = np.zeros((e_count, n), dtype=bool)
        self._pruned = np.zeros((e_count, n), dtype=bool)
        self._running = np.zeros((e_count, n), dtype=bool)
        self._latest = np.full((e_count, n), NO_ANSWER, dtype=np.int32)
        # Store class -> episode id: one block per episode, sized by its own question's classes
        # plus one spare entry that the store's -1 reads (not the store's largest: classes per
        # question range from tens to ~900, and these tables are read at random every step).
        block = np.array([t.num_classes for t in lay], dtype=np.int64)[qi] + 1
        self._class_base = np.cumsum(block) - block  # episode e's block starts here
        total = int(block.sum())
        # Unseen classes read _UNSEEN, the spare entry reads NO_ANSWER: a reveal takes the slow
        # path (_new_ids) only when a class is new to its episode, not for every 'no answer yet'.
        self._id_of_class_flat = np.full(total, _UNSEEN, dtype=np.int32)
        self._id_of_class_flat[self._class_base + block - 1] = NO_ANSWER
        self._first_at = np.empty(total, dtype=np.int64)  # scratch for _new_ids
        # id -> store class, in the same blocks (an episode's ids never outnumber its classes);
        # an id is written when it is handed out, before any read (store_classes reads ids below
        # next_id), except ERR's, which reads NO_ANSWER until the episode reveals its ERR class.
        self._class_of_id_flat = np.empty(total, dtype=np.int32)
        self._class_of_id_flat[self._class_base + NO_ANSWER_ID] = NO_ANSWER
        self._next_id = np.ones(e_count, dtype=np.int64)  # id 0 is reserved for 'ERR'
        self._opened = np.zeros(e_count, dtype=np.int64)
        self._generated = np.zeros(e_count, dtype=np.int64)
        self._probes = np.zeros(e_count, dtype=np.int64)
        self._actions = np.zeros(e_count, dtype=np.int64)
        self._live = np.ones(e_count, dtype=bool)
        # Flat views: (episode e, column j) is element e·N + j; one take/put per batch of branches
        # instead of 2-D fancy indexing.
        self._cursor_f = self._cursor.reshape(-1)
        self._finished_f = self._finished.reshape(-1)
        self._running_f = self._running.reshape(-1)
        self._pruned_f = self._pruned.reshape(-1)
        self._latest_f = self._latest.reshape(-1)
        # Per-branch state is shown through live read-only views: a copy of [E, N] per read would
        # cost as much as the step itself. Copy one to keep a snapshot across actions.
        self._view = {}
        for attr in ("_finished", "_pruned", "_running", "_latest"):
            v = getattr(self, attr).view()
            v.flags.writeable = False
            self._view[attr] = v
        self._refusals: dict[int, str] = {}
        self._closed = False

    # Tables only stepping reads (BRANCH, advance_many); READ_NEW charges a branch's tokens and
    # reveals its last cell. Built on first use: a batch of whole-branch reads never pays for them
    # (the step costs are the largest table of the layout).

    @functools.cached_property
    def _cost_flat(self) -> np.ndarray:
        """Each cell's step cost, in the flat layout."""
        return np.concatenate([t.cost_flat for t in self._lay])

    @functools.cached_property
    def _is_last(self) -> np.ndarray:
        """Whether a cell is its branch's last: a step's finals are one look-up in this table."""
        is_last = np.zeros(len(self._reveal_flat), dtype=bool)
        is_last[self._first_g + self._last_g] = True
        return is_last

    # ---- public facts and revealed state (copies) ---------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def width(self) -> int:
        """N: columns of the per-branch arrays (the largest pool of the batch)."""
        return self._width

    @property
    def pool_size(self) -> np.ndarray:
        return self._pool.copy()

    @property
    def delta(self) -> int:
        return self._delta

    @property
    def probe_cost(self) -> int:
        return self._probe_cost

    @property
    def budget(self) -> int | None:
        return self._budget

    @property
    def no_answer_class(self) -> int:
        return NO_ANSWER_ID

    @property
    def live(self) -> np.ndarray:
        """Episodes not ended by a refusal."""
        return self._live.copy()

    @property
    def tokens(self) -> np.ndarray:
        return self._generated + self._probe_cost * self._probes

    @property
    def generated_tokens(self) -> np.ndarray:
        return self._generated.copy()

    @property
    def num_probes(self) -> np.ndarray:
        return self._probes.copy()

    @property
    def num_actions(self) -> np.ndarray:
        return self._actions.copy()

    @property
    def num_opened(self) -> np.ndarray:
        return self._opened.copy()

    @property
    def opened(self) -> np.ndarray:
        """[E, N]: whether column j is an opened branch."""
        return np.arange(self._width) < self._opened[:, None]

    @property
    def depths(self) -> np.ndarray:
        """[E, N] depths: computed per read (a copy, unlike the other per-branch arrays)."""
        opened = self.opened
        branch = self._branch_base_e[:, None] + self._order_f.reshape(self._size, self._width)
        first = self._first_g.take(np.where(opened, branch, 0))
        return np.where(opened, self._cursor - first, 0)

    @property
    def finished(self) -> np.ndarray:
        return self._view["_finished"]

    @property
    def pruned(self) -> np.ndarray:
        return self._view["_pruned"]

    @property
    def running(self) -> np.ndarray:
        return self._view["_running"]

    @property
    def latest(self) -> np.ndarray:
        return self._view["_latest"]

    @property
    def final_answers(self) -> np.ndarray:
        return np.where(self._finished, self._latest, NO_ANSWER).astype(np.int32)

    # ---- trusted side -------------------------------------------------------------------------

    def refusals(self) -> dict[int, str]:
        """Episode index -> the message of the refusal that ended it."""
        return dict(self._refusals)

    def store_classes(self, answers: np.ndarray) -> np.ndarray:
        """The store's class of each episode's answer id, as `engine.store_class` maps one."""
        a = np.asarray(answers, dtype=np.int64)
        ok = (a >= 0) & (a < self._next_id)
        at = self._class_base + np.where(ok, a, 0)
        return np.where(ok, self._class_of_id_flat[at], NO_ANSWER).astype(np.int32)

    def close(self) -> None:
        self._closed = True

    # ---- actions ------------------------------------------------------------------------------

    def read_new(self, rows: Any = None) -> np.ndarray:
        act = self._admit(self._acting(rows))
        self._refuse(act & (self._opened >= self._pool),
                     lambda e: f"READ_NEW past the pool: all {self._pool[e]} branches are open")
        out = self._read_new(act & self._live, np.ones(self._size, dtype=np.int64))
        return out[:, 0]

    def read_new_many(self, k: Any, rows: Any = None) -> np.ndarray:
        act = self._acting(rows)
        ks = self._counts(k, act, "read_new_many: k")
        act = self._admit(act & self._live)
        left = self._pool - self._opened
        self._refuse(act & (ks > left), lambda e: f"READ_NEW ×{ks[e]} past the pool: "
                     f"{left[e]} branches left")
        return self._read_new(act & self._live, ks)

    def branch_many(self, k: Any, probe: Any = False, rows: Any = None) -> None:
        act = self._acting(rows)
        ks = self._counts(k, act, "branch_many: k")
        if probe is not False and probe is not True:
            probe = as_flag(probe, "branch_many: probe")
        act = self._admit(act & self._live)
        left = self._pool - self._opened
        self._refuse(act & (ks > left), lambda e: f"BRANCH ×{ks[e]} past the pool: "
                     f"{left[e]} branches left")
        act = act & self._live
        self._actions[act] += 1
        ks = np.where(act, ks, 0)
        e, j = self._spread(ks)
        if len(e) == 0:
            return
        fl = e * self._width + j
        b = self._branch_base_e.take(e) + self._order_f.take(fl)
        g = self._first_g.take(b)
        last = self._last_g.take(b)
        self._generated += np.bincount(e, weights=self._cost_flat.take(g),
                                       minlength=self._size).astype(np.int64)
        self._opened += ks
        self._cursor_f[fl] = g + 1
        self._running_f[fl] = True
        done = last == 0
        if probe:
            self._probes += np.bincount(e[~done], minlength=self._size)
            self._reveal(e, fl, g, np.flatnonzero(done))
        elif done.any():
            at = np.flatnonzero(done)
            self._reveal(e.take(at), fl.take(at), g.take(at), np.arange(len(at)))

    def advance_many(self, which: Any, times: Any = 1, rows: Any = None) -> np.ndarray:
        r, sel = self._selection(which, rows, "advance_many: which", running=True)
        if type(times) is not int or times != 1:
            times = as_count(times, "advance_many: times", 1)
        r, sel = self._admit_rows(r, sel)
        self._actions[r] += 1
        e, fl = self._elements(r, sel)
        f = self._cursor_f.take(fl)  # the table cell each branch reveals now
        size = self._size
        for _ in range(times):
            if len(e) == 0:
                break
            fin = self._is_last.take(f)
            # A step before the last generates one interval (Δ) and reveals a probe (κ); the last
            # costs what the table says and reveals the final: count the two kinds apart.
            stepped = np.bincount(e, minlength=size)
            ends = np.flatnonzero(fin)  # (boolean indexing is several times slower than take)
            if len(ends):
                ef = e.take(ends)
                ended = np.bincount(ef, minlength=size)
                tail = np.bincount(ef, weights=self._cost_flat.take(f.take(ends)), minlength=size)
                self._generated += self._delta_e * (stepped - ended) + tail.astype(np.int64)
                self._probes += stepped - ended
            else:
                self._generated += self._delta_e * stepped
                self._probes += stepped
            self._reveal(e, fl, f, ends, cursor=f + 1)
            if times == 1:  # the common case: nothing to carry to a next repeat
                break
            if len(ends):
                keep = np.flatnonzero(~fin)
                e, fl, f = e.take(keep), fl.take(keep), f.take(keep) + 1
            else:
                f = f + 1
        return self._view["_latest"]

    def prune_many(self, which: Any, rows: Any = None) -> None:
        r, sel = self._selection(which, rows, "prune_many: which")
        r, sel = self._refuse_rows(r, sel, sel & self._pruned[r, :sel.shape[1]], lambda e, m: (
            f"PRUNE of already pruned branch {int(np.flatnonzero(m)[0])}"))
        r, sel = self._admit_rows(r, sel)
        self._actions[r] += 1
        _, fl = self._elements(r, sel)
        self._pruned_f[fl] = True
        self._running_f[fl] = False

    # ---- internals ----------------------------------------------------------------------------

    def _acting(self, rows: Any) -> np.ndarray:
        if self._closed:
            raise InvalidAction("the episode has ended")
        if rows is None:
            return self._live.copy()
        r = np.asarray(rows)
        if r.dtype == bool:
            if r.shape != (self._size,):
                raise InvalidAction(f"rows must be a mask with one entry per episode ({self._size})")
            return r & self._live
        act = np.zeros(self._size, dtype=bool)
        act[r.astype(np.int64)] = True
        return act & self._live

    def _counts(self, k: Any, act: np.ndarray, what: str) -> np.ndarray:
        if isinstance(k, np.ndarray) and k.ndim == 1:
            if k.shape != (self._size,) or k.dtype.kind not in "iu":
                raise InvalidAction(f"{what} must be an integer or one integer per episode")
            ks = k.astype(np.int64)
            self._refuse(act & (ks < 0), lambda e: f"{what} must be >= 0, got {ks[e]}")
            return np.where(act, ks, 0)
        return np.where(act, as_count(k, what, 0), 0).astype(np.int64)

    def _selection(self, which: Any, rows: Any, what: str,
                   running: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The acting live episodes (ascending indices) and their rows of the branch mask: `which`
        is [E, M] with rows=None or a bool mask, [len(rows), M] with episode indices, M <= N its
        first M columns (the ones past it unselected). Refuses episodes whose mask names an
        unopened branch (and, with `running`, one that cannot be stepped), as Episode checks
        them: unopened first."""
        if self._closed:
            raise InvalidAction("the episode has ended")
        sel = np.asarray(which)
        if rows is None:
            r = np.arange(self._size)
        else:
            r = np.asarray(rows)
            if r.dtype == bool:
                if r.shape != (self._size,):
                    raise InvalidAction(f"rows must be a mask with one entry per episode "
                                        f"({self._size})")
                r = np.flatnonzero(r)
                if sel.dtype == bool and sel.ndim == 2 and len(sel) == self._size:
                    sel = sel[r]
            elif r.ndim != 1 or (len(r) and (r.dtype.kind not in "iu" or r.min() < 0
                                             or r.max() >= self._size
                                             or (np.diff(r) <= 0).any())):
                raise InvalidAction("rows must be ascending episode indices or a bool mask")
        if (sel.dtype != bool or sel.ndim != 2 or len(sel) != len(r)
                or not 1 <= sel.shape[1] <= self._width):
            raise InvalidAction(f"{what} must be a bool mask of shape ({len(r)}, {self._width}) "
                                f"(or fewer columns): one row per acting episode")
        r = r.astype(np.int64, copy=False)
        live = self._live[r]
        if not live.all():
            r, sel = r[live], sel[live]
        def refusal(e: int, m: np.ndarray) -> str:
            if np.flatnonzero(m)[-1] >= self._opened[e]:
                return f"{what} names a branch that is not open ({self._opened[e]} opened)"
            return self._not_running(e, m)

        m = sel.shape[1]
        if running:  # running implies opened: one check for both, told apart on refusal only
            return self._refuse_rows(r, sel, np.greater(sel, self._running[r, :m]),  # sel & ~running
                                     refusal)
        outside = sel & (np.arange(m) >= self._opened[r][:, None])
        return self._refuse_rows(r, sel, outside, refusal)

    def _elements(self, r: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Episode and flat position of every selected branch, episode-major (flatnonzero: 2-D
        nonzero is an order of magnitude slower)."""
        m = sel.shape[1]
        at = np.flatnonzero(sel)
        ri = at // m
        if len(r) == self._size and m == self._width:  # every episode acts, all columns
            return ri, at
        e = ri if len(r) == self._size else r.take(ri)  # (r is then 0..E-1: rows are episodes)
        return e, at + (e * self._width - ri * m)

    def _refuse_rows(self, r: np.ndarray, sel: np.ndarray, bad: np.ndarray,
                     message: Any) -> tuple[np.ndarray, np.ndarray]:
        """End the episodes r[i] whose row of `bad` has a branch; message(e, bad row)."""
        if not bad.any():  # the common case, and much cheaper than any(axis=1)
            return r, sel
        hit = bad.any(axis=1)
        for i in np.flatnonzero(hit).tolist():
            e = int(r[i])
            self._refusals[e] = message(e, bad[i])
            self._live[e] = False
        return r[~hit], sel[~hit]

    def _admit_rows(self, r: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._budget is None:
            return r, sel
        spent = self.tokens[r] >= self._budget
        return self._refuse_rows(r, sel, spent[:, None], lambda e, m: self._spent(e))

    def _spent(self, e: int) -> str:
        return (f"the budget is spent ({self.tokens[e]} tokens so far, budget {self._budget}): "
                "only ANSWER remains")

    def _not_running(self, e: int, bad: np.ndarray) -> str:
        """Episode's refusal for a mask naming a pruned or finished branch (the first one)."""
        j = int(np.flatnonzero(bad)[0])
        return f"branch {j} is {'pruned' if self._pruned[e, j] else 'finished'}"

    def _refuse(self, rows: np.ndarray, message: Any) -> None:
        """End the episodes `rows` (acting, live) with the refusal `message(e)`."""
        rows = rows & self._live
        if rows.any():
            for e in np.flatnonzero(rows).tolist():
                self._refusals[e] = message(e)
            self._live &= ~rows

    def _admit(self, act: np.ndarray) -> np.ndarray:
        """The budget rule per episode: admissible while tokens < budget."""
        if self._budget is None:
            return act
        spent = act & (self.tokens >= self._budget)
        self._refuse(spent, self._spent)
        return act & ~spent

    def _spread(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(episode, column) of the next ks[e] branches of every episode, episode-major."""
        e = np.repeat(np.arange(self._size), ks)
        starts = np.cumsum(ks) - ks
        j = np.arange(len(e)) - np.repeat(starts, ks) + self._opened[e]
        return e, j

    def _read_new(self, act: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """READ_NEW ×ks[e] for the admitted episodes `act`."""
        self._actions[act] += 1
        ks = np.where(act, ks, 0)
        out = np.full((self._size, max(1, int(ks.max(initial=0)))), NO_ANSWER, dtype=np.int32)
        e, j = self._spread(ks)
        if len(e) == 0:
            return out
        fl = e * self._width + j
        b = self._branch_base_e.take(e) + self._order_f.take(fl)
        self._generated += np.bincount(e, weights=self._tokens_g.take(b),
                                       minlength=self._size).astype(np.int64)
        self._opened += ks
        cell = self._first_g.take(b) + self._last_g.take(b)
        self._reveal(e, fl, cell, np.arange(len(e)), cursor=cell + 1)
        out[e, j - (self._opened[e] - ks[e])] = self._latest_f.take(fl)
        return out

    def _reveal(self, e: np.ndarray, fl: np.ndarray, cell: np.ndarray, final: np.ndarray,
                cursor: np.ndarray | None = None) -> None:
        """Reveal flat table cells `cell` as the branches at flat positions `fl` (of episodes e),
        numbered per episode in the order listed (episode-major, as every action lists them);
        `final`: the indices (into these lists) of the branches that finish; `cursor`: their next
        cells."""
        s = self._reveal_flat.take(cell)
        key = self._class_base.take(e) + s  # the store's -1 reads the spare entry before: -1
        ids = self._id_of_class_flat.take(key)
        if len(ids) and ids.min() == _UNSEEN:  # a class new to its episode: slow path
            ids = self._new_ids(e, s, key, ids)
        self._latest_f[fl] = ids
        if cursor is not None:
            self._cursor_f[fl] = cursor
        if len(final):
            done = fl.take(final)
            self._finished_f[done] = True
            self._running_f[done] = False

    def _new_ids(self, e: np.ndarray, s: np.ndarray, key: np.ndarray,
                 ids: np.ndarray) -> np.ndarray:
        """Number the classes of `s` no episode has revealed yet, per episode in listed order."""
        unseen = np.flatnonzero(ids == _UNSEEN)
        pos = unseen
        k = key.take(pos)
        # Each new (episode, class) once, at its first position: a scratch array takes the least
        # position per key (np.minimum.at is defined for repeats).
        self._first_at[k] = _UNSET
        np.minimum.at(self._first_at, k, pos)
        pos = pos.take(np.flatnonzero(self._first_at.take(k) == pos))  # ascending: reveal order
        ne, ns = e.take(pos), s.take(pos)
        err = ns == self._err_class.take(ne)
        if err.any():
            self._id_of_class_flat[key[pos[err]]] = NO_ANSWER_ID
            self._class_of_id_flat[self._class_base[ne[err]] + NO_ANSWER_ID] = ns[err]
            keep = np.flatnonzero(~err)
            ne, ns = ne.take(keep), ns.take(keep)
        # Rank within its episode (ne is ascending): the position minus its episode's first one.
        at = np.arange(len(ne))
        start = np.zeros(len(ne), dtype=np.int64)
        if len(ne) > 1:
            start[1:] = np.where(ne[1:] != ne[:-1], at[1:], 0)
            np.maximum.accumulate(start, out=start)
        rank = at - start
        new_ids = self._next_id.take(ne) + rank
        base = self._class_base.take(ne)
        self._id_of_class_flat[base + ns] = new_ids
        self._class_of_id_flat[base + new_ids] = ns
        self._next_id += np.bincount(ne, minlength=self._size)
        ids[unseen] = self._id_of_class_flat.take(k)
        return ids
