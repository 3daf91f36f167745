# ruff: noqa
# expect: non_answer
"""run() is a generator."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        yield ep.read_new()
