# ruff: noqa
# expect: forbidden
"""Writes to the episode handle's accounting."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        setattr(ep, "budget", 10**9)
        return ep.read_new()
