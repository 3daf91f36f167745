# ruff: noqa
# expect: forbidden
# runtime: exception
"""Overwrites a canary file next to the parent's data."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        open("__CANARY__", "w").write("pwned")
        return ep.read_new()
