# ruff: noqa
# expect: non_monotone
# options: check_monotone
"""Spends less as beta grows."""
class Candidate:
    NAME = "candidate"
    def __init__(self, n=8):
        self.n = int(n)

    @staticmethod
    def schedule(beta):
        return {"n": int(round(16 - 15 * beta))}

    def run(self, ep):
        return ep.read_new_many(self.n)[0]
