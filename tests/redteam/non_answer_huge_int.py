# ruff: noqa
# expect: non_answer
"""Returns an integer no answer class can have."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.read_new()
        return 2**40
