# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reads a private attribute with a computed getattr name."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        name = "_" + "q"
        q = getattr(ep, name)
        return ep.read_new()
