# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Finds the engine's objects through the garbage collector."""
import gc

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        objs = gc.get_objects()
        return ep.read_new()
