# ruff: noqa
# expect: forbidden
# runtime: exception
"""Calls exit()."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        exit(0)
