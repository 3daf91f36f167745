# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Climbs to object through mro()."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        base = int.mro()[-1]
        return ep.read_new()
