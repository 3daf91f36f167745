# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Walks up the stack to the evaluator's frame."""
import inspect

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        f = inspect.currentframe().f_back
        return ep.read_new()
