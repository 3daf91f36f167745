# ruff: noqa
# expect: exception
"""Raises SystemExit from run()."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        raise SystemExit(0)
