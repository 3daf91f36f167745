# ruff: noqa
# expect: invalid_action
"""Advances a branch that was never opened."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.advance(99)
