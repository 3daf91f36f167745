# ruff: noqa
# expect: timeout
# limits: episode_seconds=1.0
"""Spends a long time on every step."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        for step in range(100):
            x = 0
            for i in range(40_000_000):
                x += i
            ep.read_new()
        return 0
