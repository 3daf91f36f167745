# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Walks frames through a generator's gi_frame."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        g = (x for x in [1])
        f = g.gi_frame.f_back
        return ep.read_new()
