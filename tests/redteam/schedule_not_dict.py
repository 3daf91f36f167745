# ruff: noqa
# expect: interface
"""schedule() returns a list."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return [beta]

    def run(self, ep):
        return ep.read_new()
