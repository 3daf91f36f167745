# ruff: noqa
# expect: non_answer
"""Returns an int subclass whose value the parent would have to trust."""


class Answer(int):
    pass


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return Answer(ep.read_new())
