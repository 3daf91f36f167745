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
