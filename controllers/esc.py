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
