# ruff: noqa
# expect: non_answer
"""Returns a string."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.read_new()
        return "A"
