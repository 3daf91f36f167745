# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Imports os through __import__."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        __import__("os").system("true")
        return ep.read_new()
