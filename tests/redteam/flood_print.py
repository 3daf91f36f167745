# ruff: noqa
# expect: ok
"""Prints 20 MB."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        for i in range(200_000):
            print("x" * 100)
        return ep.read_new()
