# ruff: noqa
# expect: non_answer
"""Returns an integer too long for Python's decimal repr (over 4300 digits): the report must
still be a verdict, not a crash while building the message."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.read_new()
        return -(10 ** 5000)
