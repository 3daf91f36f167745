# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Rebinds a builtin for everyone through __builtins__."""
__builtins__["len"] = lambda x: 0

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
