"""Adaptive-Consistency (Aggarwal et al. 2023): read branches one at a time and stop as soon as a
Beta posterior says the current leader is the majority with enough confidence.

With v1 >= v2 the top two vote counts, the stop rule is 1 - BetaCDF(0.5; v1 + 1, v2 + 1) >
threshold, checked once at least two branches are read. At max_samples (or the end of the pool) it
falls back to the majority. Ties go to the answer seen first.
"""


def majority(counts):
    """counts: dict answer -> votes in first-seen order. Ties go to the answer seen first."""
    return max(counts, key=counts.get) if counts else -1


class AdaptiveConsistency:
    NAME = "asc"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"max_samples": int(round(4 + 60 * b)), "threshold": 0.80 + 0.19 * b}

    def __init__(self, max_samples=64, threshold=0.95):
        self.max_samples = int(max_samples)
        self.threshold = float(threshold)

    def run(self, ep):
        # Imported here: an evaluation that never calls run() spares its ~0.15 s.
        from scipy.special import betainc

        counts = {}
        limit = min(self.max_samples, ep.pool_size)
        for n_read in range(1, limit + 1):
            a = ep.read_new()
            if a >= 0:
                counts[a] = counts.get(a, 0) + 1
            if n_read >= 2 and counts:
                top = sorted(counts.values(), reverse=True)
                v1 = top[0]
                v2 = top[1] if len(top) > 1 else 0
                # betainc(a, b, x) is the Beta(a, b) CDF at x: the same value scipy.stats.beta.cdf
                # computes, at a fraction of the call overhead.
                confidence = 1.0 - betainc(v1 + 1, v2 + 1, 0.5)
                if confidence > self.threshold:
                    ep.trace("stop", reason="confident", n=n_read, confidence=float(confidence))
                    return majority(counts)
        ep.trace("stop", reason="max_samples", n=limit)
        return majority(counts)


# ---- run_batch: the same controller over many episodes at once (docs/batch.md). It must
# answer exactly as run above would, episode by episode; run is the reference. Discovery is
# shown this file without this section (autotts.controller.per_episode_source).

import functools  # noqa: E402
import itertools  # noqa: E402

import numpy as np  # noqa: E402

# The stop rule's confidence, 1 - betainc(v1 + 1, v2 + 1, 0.5), is the binomial tail
# P(Bin(v1 + v2 + 1, 1/2) <= v1): a sum of binomial coefficients over a power of two, exact in
# integers. scipy's betainc is within 2e-15 of it for every count below EXACT_UP_TO (checked pair
# by pair in tests/test_controllers.py), so wherever the exact value is more than BAND away from
# the threshold it decides as scipy does; only a count pair within BAND of the threshold asks
# scipy itself. That spares a one-store eval the import of scipy.special (~0.15 s, more than the
# evaluation itself).
BAND = 1e-12
EXACT_UP_TO = 256


@functools.lru_cache(maxsize=16)
def stop_table(threshold, size):
    """stop[v1, v2] (v1 >= v2, both below size): whether run() stops on top counts v1, v2, i.e.
    1.0 - betainc(v1 + 1, v2 + 1, 0.5) > threshold, as scipy evaluates it."""
    stop = np.zeros((size, size), dtype=bool)
    near = []
    row = [1]  # Pascal's triangle, row n = v1 + v2 + 1
    for n in range(1, 2 * size):
        row = [1, *map(sum, itertools.pairwise(row)), 1]
        lo = n // 2  # the least v1 with v2 <= v1
        tail = sum(row[:lo])
        for v1 in range(lo, min(n, size)):
            tail += row[v1]  # sum of row[0..v1]
            v2 = n - 1 - v1
            confidence = tail / (1 << n)  # int / int: the exact value, rounded once
            if abs(confidence - threshold) <= BAND:
                near.append((v1, v2))
            else:
                stop[v1, v2] = confidence > threshold
    if near:
        from scipy.special import betainc

        v1, v2 = np.array(near, dtype=float).T
        stop[v1.astype(int), v2.astype(int)] = 1.0 - betainc(v1 + 1, v2 + 1, 0.5) > threshold
    return stop


def confident(threshold, v1, v2):
    """1.0 - betainc(v1 + 1, v2 + 1, 0.5) > threshold for top counts v1 >= v2 (int arrays)."""
    size = int(v1.max(initial=0)) + 1
    if size > EXACT_UP_TO:
        from scipy.special import betainc

        return 1.0 - betainc(v1 + 1.0, v2 + 1.0, 0.5) > threshold
    # A table's entries do not depend on its size. The largest count grows by one read at a
    # time: a table per count was ~a tenth of a cell's evaluation; one per power of two is a few.
    return stop_table(threshold, min(EXACT_UP_TO, 1 << (size - 1).bit_length()))[v1, v2]


def run_batch(self, batch):
    limit = np.minimum(self.max_samples, batch.pool_size)
    active = batch.live
    counts = np.zeros((batch.size, int(limit.max()) + 2), dtype=np.int64)
    # The two largest counts (run's top[0], top[1]), kept up to date vote by vote instead of
    # sorting every row at every read; `ties`: how many classes hold v1 (2 stands for "many"
    # while nothing is counted).
    v1 = np.zeros(batch.size, dtype=np.int64)
    v2 = np.zeros(batch.size, dtype=np.int64)
    ties = np.full(batch.size, 2)
    for n_read in range(1, int(limit.max()) + 1):
        active &= n_read <= limit
        if not active.any():
            break
        a = batch.read_new(rows=active)
        active &= batch.live
        voted = np.flatnonzero(active & (a >= 0))
        k = counts[voted, a[voted]] + 1  # the voted class's new count
        counts[voted, a[voted]] = k
        t1, t2, nt = v1[voted], v2[voted], ties[voted]
        was_top = k - 1 == t1  # it held v1: it alone now leads; v1 falls to second if shared
        v1[voted] = np.where(was_top, k, t1)
        v2[voted] = np.where(was_top, np.where(nt >= 2, t1, t2), np.maximum(k, t2))
        ties[voted] = np.where(was_top, 1, nt + (k == t1))
        if n_read >= 2:
            rows = np.flatnonzero(active)
            c1, c2 = v1[rows], v2[rows]
            active[rows[(c1 > 0) & confident(self.threshold, c1, c2)]] = False
    # Every episode has stopped with exactly its opened branches read: their majority (over the
    # columns that opened anywhere: the pool can be much wider than max_samples).
    m = max(1, int(batch.num_opened.max()))
    return row_majority(batch.latest[:, :m], batch.opened[:, :m])


AdaptiveConsistency.run_batch = run_batch


def row_majority(answers, mask):
    """majority() of each row's masked answers (ties: the first seen, by column)."""
    rows, cols = answers.shape
    width = int(answers.max(initial=-1)) + 2  # slot 0 of each row collects what does not vote
    off = np.arange(rows) * width
    key = answers + 1
    key *= mask  # slot 0 where masked out (arithmetic: np.where is slower here)
    key = key + off[:, None]
    counts = np.bincount(key.ravel(), minlength=rows * width).astype(np.int32)
    counts[::width] = 0
    # One argmax per row finds the leader: the highest count, then the first column (the
    # first-seen among tied classes); a row without votes lands on a slot-0 column, read -1.
    # int32 throughout: argmax over int64 rows is several times slower.
    score = counts.take(key)
    score *= cols
    score -= np.arange(cols, dtype=np.int32)
    return key.ravel().take(np.arange(rows) * cols + score.argmax(axis=1)) - off - 1
