# ruff: noqa
# expect: forbidden
"""Reaches private attributes through str.format field lookups."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        leak = "{0._q._reveal}".format(ep)
        return ep.read_new()
