# ruff: noqa
# expect: exception
"""Recurses without end."""
def down(n):
    return down(n + 1)


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return down(0)
