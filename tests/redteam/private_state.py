# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reads the unrevealed replay data behind the episode handle."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return int(ep._q._reveal[0, -1])
