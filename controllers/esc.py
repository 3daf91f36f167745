"""Early-Stopping Self-Consistency (Li et al. 2024): read branches in windows and stop at the
first window whose answers all agree.

For max_samples // window windows, read `window` whole branches; if every answer of the window is
the same, return it. Otherwise return the majority of everything read (ties: first seen).
"""


def majority(answers):
    counts = {}
    for a in answers:
        if a >= 0:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.get) if counts else -1


class EarlyStoppingConsistency:
    NAME = "esc"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"max_samples": int(8 * round(1 + 7 * b)), "window": 8}

    def __init__(self, max_samples=64, window=8):
        self.max_samples = int(max_samples)
        self.window = int(window)

    def run(self, ep):
        seen = []
        for w in range(self.max_samples // self.window):
            k = min(self.window, ep.pool_size - ep.num_opened)
            if k <= 0:
                break
            answers = ep.read_new_many(k).tolist()
            seen.extend(answers)
            if len(set(answers)) == 1:
                ep.trace("stop", reason="window_agrees", window=w)
                return answers[0]
        ep.trace("stop", reason="max_samples", n=len(seen))
        return majority(seen)


# ---- run_batch: the same controller over many episodes at once (docs/batch.md). It must
# answer exactly as run above would, episode by episode; run is the reference. Discovery is
# shown this file without this section (autotts.controller.per_episode_source).

import numpy as np  # noqa: E402


def run_batch(self, batch):
    active = batch.live
    agreed = np.zeros(batch.size, dtype=bool)
    answer = np.full(batch.size, -1)
    for _ in range(self.max_samples // self.window):
        k = np.minimum(self.window, batch.pool_size - batch.num_opened)
        active &= k > 0
        if not active.any():
            break
        got = batch.read_new_many(np.where(active, k, 0), rows=active)
        active &= batch.live
        window = np.arange(got.shape[1]) < k[:, None]
        agree = active & ((got == got[:, :1]) | ~window).all(axis=1)
        answer[agree] = got[agree, 0]
        agreed |= agree
        active &= ~agree
    m = max(1, int(batch.num_opened.max()))  # the columns that opened anywhere
    return np.where(agreed, answer, row_majority(batch.latest[:, :m], batch.opened[:, :m]))


EarlyStoppingConsistency.run_batch = run_batch


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
