"""Parallel-Probe (arXiv 2602.03845): grow many branches in lockstep, probe each after every
interval, prune branches that keep disagreeing with the leader, stop once the leader is stable.

Open num_chains branches (BRANCH+PROBE). Each step, ADVANCE every unpruned, unfinished branch
probe_burst times; the leader is the majority of the unpruned branches' latest answers. From step
warm_up on, with more than one active branch, a branch that disagrees with the leader counts one
more off-track step (agreeing resets it) and is pruned after prune_patience of them. Return the
leader once it has stayed the same for T consecutive steps (T + 1 equal leaders in a row), or when
everything is finished or pruned, or at max_steps. Steps count from 0, so pruning starts at step
warm_up; a finished branch keeps voting with its final answer.
"""

import numpy as np


def majority(answers):
    """Most frequent answer class (>= 0) of an int array; ties go to the one seen first."""
    answers = answers[answers >= 0]
    if len(answers) == 0:
        return -1
    counts = np.bincount(answers)
    # The first answer whose count is the maximum is the first-seen among the tied leaders.
    return int(answers[np.argmax(counts[answers] == counts.max())])


class ParallelProbe:
    NAME = "parallel_probe"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {
            "num_chains": int(round(4 + 60 * b)),
            "T": int(round(8 + 32 * b)),
            "prune_patience": int(round(3 + 4 * b)),
            "warm_up": int(round(5 + 10 * b)),
            "probe_burst": 1,
            "max_steps": int(round(40 + 60 * b)),
        }

    def __init__(self, num_chains=64, T=40, prune_patience=7, warm_up=15, probe_burst=1,
                 max_steps=100):
        self.num_chains = int(num_chains)
        self.T = int(T)
        self.prune_patience = int(prune_patience)
        self.warm_up = int(warm_up)
        self.probe_burst = int(probe_burst)
        self.max_steps = int(max_steps)

    def run(self, ep):
        n = min(self.num_chains, ep.pool_size)
        ep.branch_many(n, probe=True)
        off_track = np.zeros(n, dtype=np.int64)
        leader, previous, stable = -1, None, 0
        for step in range(self.max_steps):
            running = ep.running
            if running.any():
                ep.advance_many(running, times=self.probe_burst)
            latest, alive = ep.latest, ~ep.pruned
            leader = majority(latest[alive])
            if step >= self.warm_up and alive.sum() > 1:
                unfinished = alive & ~ep.finished
                disagree = unfinished & (latest != leader)
                off_track[disagree] += 1
                off_track[unfinished & ~disagree] = 0
                drop = disagree & (off_track >= self.prune_patience)
                if drop.any():
                    ep.prune_many(drop)
                    ep.trace("prune", step=step, n=int(drop.sum()))
                    leader = majority(latest[~ep.pruned])
            # The count starts at 0 and resets to 0: returning needs T + 1 equal leaders in a row.
            stable = stable + 1 if leader == previous else 0
            previous = leader
            if stable >= self.T:
                ep.trace("stop", reason="stable", step=step)
                return leader
            if not ep.running.any():
                ep.trace("stop", reason="all_done", step=step)
                return leader
        ep.trace("stop", reason="max_steps", step=self.max_steps)
        return leader


# ---- run_batch: the same controller over many episodes at once (docs/batch.md). It must
# answer exactly as run above would, episode by episode; run is the reference. Discovery is
# shown this file without this section (autotts.controller.per_episode_source).


def run_batch(self, batch):
    # The same steps as run, for every episode still going: `ep` holds their indices, and
    # each per-branch array below has one row per such episode (compact: rows leave as their
    # episodes stop, so no step works on finished episodes).
    batch.branch_many(np.minimum(self.num_chains, batch.pool_size), probe=True)
    leader = np.full(batch.size, -1)
    ep = np.flatnonzero(batch.live)
    # Only the first m columns ever open (num_chains of a larger pool): the per-branch arrays
    # below keep those, and so do the masks handed to the batch (the columns past m unselected).
    m = max(1, int(batch.num_opened.max()))
    live = batch.opened[ep, :m]  # opened and not pruned: only this controller prunes
    alive = live.sum(axis=1)  # per episode
    # Off-track steps: a count never past prune_patience (a branch that reaches it is pruned).
    off = np.zeros(live.shape, dtype=np.int8 if self.prune_patience < 127 else np.int64)
    previous = np.full(len(ep), -2)  # no leader yet: unequal to any
    stable = np.zeros(len(ep), dtype=np.int64)
    running = batch.running[ep, :m]
    moving = running.any(axis=1)  # after the first step, every episode still going
    for step in range(self.max_steps):
        if moving.all():
            batch.advance_many(running, times=self.probe_burst, rows=ep)
        elif moving.any():
            batch.advance_many(running[moving], times=self.probe_burst, rows=ep[moving])
        kept = batch.live[ep]
        if not kept.all():  # refused (a budget): that episode's run ends on the refusal
            ep, live, alive, off, previous, stable = (
                ep[kept], live[kept], alive[kept], off[kept], previous[kept], stable[kept])
        # Every episode still going (the first T steps at least): the batch's own (read-only)
        # array, without a copy; prune_many leaves `latest` alone, so it holds for this step.
        latest = batch.latest[:, :m] if len(ep) == batch.size else batch.latest[ep, :m]
        now = row_majority(latest, live)
        running = batch.running[ep, :m]  # alive and not finished
        if step >= self.warm_up:
            unfinished = running & (alive > 1)[:, None]
            disagree = unfinished & (latest != now[:, None])
            # Off-track steps: one more on disagreeing, reset on agreeing, else kept.
            off += disagree
            off *= unfinished <= disagree  # kept unless unfinished and agreeing
            drop = disagree & (off >= self.prune_patience)
            dropping = drop.any(axis=1)
            if dropping.any():
                gone = drop[dropping]
                batch.prune_many(gone, rows=ep[dropping])
                alive[dropping] -= gone.sum(axis=1)
                live &= ~drop
                running &= ~drop
                # run() takes the majority again after pruning: it is the same leader, as the
                # pruned branches all disagreed with it. Its votes stay, the others only lose
                # votes and their first columns only move right, so nothing overtakes it.
        leader[ep] = now
        stable = np.where(now == previous, stable + 1, 0)
        previous = now
        moving = running.any(axis=1)
        going = (stable < self.T) & moving & batch.live[ep]
        if not going.all():
            ep, running, live, alive, off, previous, stable, moving = (
                ep[going], running[going], live[going], alive[going], off[going],
                previous[going], stable[going], moving[going])
            if len(ep) == 0:
                break
    return leader


ParallelProbe.run_batch = run_batch


def row_majority(answers, mask):
    """majority() of each row's masked answers (ties: the first seen, by column)."""
    rows, cols = answers.shape
    # Each row counts in a block of its own, 1 + its largest answer + 1 slots (slot 0 collects
    # what does not vote): answer ids are per episode, and most rows' are far below the largest.
    size = answers.max(axis=1, initial=-1).astype(np.int64) + 2
    off = np.cumsum(size) - size
    key = answers + 1
    key *= mask  # slot 0 where masked out (arithmetic: np.where is slower here)
    key = key + off[:, None]
    counts = np.bincount(key.ravel(), minlength=int(size.sum()))
    counts[off] = 0
    # One argmax per row finds the leader: the highest count, then the first column (the
    # first-seen among tied classes); a row without votes lands on a slot-0 column, read -1.
    # int32: argmax over int64 rows is several times slower.
    score = counts.take(key).astype(np.int32)
    score *= cols
    score -= np.arange(cols, dtype=np.int32)
    return key.ravel().take(np.arange(rows) * cols + score.argmax(axis=1)) - off - 1
