"""Probe-weighted voting: every branch votes for its final answer with a weight that grows with
how long that answer had already been stable in its probes.

A branch that reached its answer early and kept it is more trustworthy than one that flipped at
the last interval. Open n branches with probes, advance all of them to the end, and weight each
final answer by 1 + (number of trailing probes equal to it) / depth. Ties of the weighted vote go
to the answer seen first. Larger β opens more branches.
"""



class StabilityVote:
    NAME = "stability_vote"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"n": 2 + round(30 * b)}

    def __init__(self, n=16):
        self.n = int(n)

    def run(self, ep):
        n = min(self.n, ep.pool_size)
        ep.branch_many(n, probe=True)
        while ep.running.any():
            ep.advance_many(ep.running)
        weights = {}
        for i in range(n):
            history = ep.history(i)
            final = int(history[-1])
            if final < 0:
                continue
            stable = 0
            for a in history[-2::-1]:
                if a != final:
                    break
                stable += 1
            weights[final] = weights.get(final, 0.0) + 1.0 + stable / len(history)
        if not weights:
            return -1
        return max(weights, key=weights.get)
