# ruff: noqa
# expect: exception
"""Raises a bare BaseException from run()."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        raise BaseException("bye")
