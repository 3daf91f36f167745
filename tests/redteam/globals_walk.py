# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reads the engine's module globals through a bound method."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        g = ep.read_new.__func__.__globals__
        return ep.read_new()
