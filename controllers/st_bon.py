"""ST-BoN-style self-truncation (after Wang et al. 2025): go wide, keep the most consistent branch,
deepen only that one.

Open n branches and advance each for `early` intervals with probes. The branch whose latest answer
agrees with the most other branches (ties: the most advanced, then the first opened) is kept; all
others are pruned, and the kept branch is read to its end. Its final answer is returned. The idea:
the cheap early prefix already tells which line of reasoning the samples agree on, so only one full
chain is paid for. Larger β widens the prefix comparison (more branches, longer prefixes).
"""

import numpy as np


class SelfTruncationBestOfN:
    NAME = "st_bon"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"n": 2 + round(30 * b), "early": 2 + round(8 * b)}

    def __init__(self, n=16, early=6):
        self.n = int(n)
        self.early = int(early)

    def run(self, ep):
        n = min(self.n, ep.pool_size)
        ep.branch_many(n, probe=True)
        if self.early > 1 and ep.running.any():
            ep.advance_many(ep.running, times=self.early - 1)
        latest = ep.latest
        valid = latest >= 0
        support = np.zeros(n, dtype=np.int64)
        if valid.any():
            counts = np.bincount(latest[valid])
            support[valid] = counts[latest[valid]]
        # Most support first, then the deepest (more evidence), then the first opened.
        order = np.lexsort((np.arange(n), -ep.depths, -support))
        keep = int(order[0])
        others = np.ones(n, dtype=bool)
        others[keep] = False
        if others.any():
            ep.prune_many(others)
        ep.trace("keep", branch=keep, support=int(support[keep]))
        if not ep.is_finished(keep):
            ep.read(keep)
        return ep.latest_answer(keep)
