"""Self-Consistency (Wang et al. 2022): read N whole branches, return the majority answer.

The simplest width-only controller: no probing, no early stop. Cost grows linearly with N.
Ties go to the answer seen first (the published evaluator's rule).
"""

import numpy as np


def majority(answers):
    """Most frequent answer class (>= 0); ties go to the one seen first; -1 if none."""
    counts = {}
    for a in answers:
        if a >= 0:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return -1
    return max(counts, key=counts.get)


class SelfConsistency:
    NAME = "sc"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"n": int(round(1 + 63 * b))}

    def __init__(self, n=64):
        self.n = int(n)

    def run(self, ep):
        k = min(self.n, ep.pool_size)
        finals = ep.read_new_many(k)
        # The stop reason every controller reports (the discovery digest counts them).
        ep.trace("stop", reason="read_n", n=int(k))
        return majority(np.asarray(finals).tolist())


# ---- run_batch: the same controller over many episodes at once (docs/batch.md). It must
# answer exactly as run above would, episode by episode; run is the reference. Discovery is
# shown this file without this section (autotts.controller.per_episode_source).


def run_batch(self, batch):
    k = np.minimum(self.n, batch.pool_size)
    finals = batch.read_new_many(k)
    return row_majority(finals, np.arange(finals.shape[1]) < k[:, None])


SelfConsistency.run_batch = run_batch


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
