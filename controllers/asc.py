"""Adaptive-Consistency (Aggarwal et al. 2023): read branches one at a time and stop as soon as a
Beta posterior says the current leader is the majority with enough confidence.

With v1 >= v2 the top two vote counts, the stop rule is 1 - BetaCDF(0.5; v1 + 1, v2 + 1) >
threshold, checked once at least two branches are read. At max_samples (or the end of the pool) it
falls back to the majority. Ties go to the answer seen first.
"""

from scipy.special import betainc


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
