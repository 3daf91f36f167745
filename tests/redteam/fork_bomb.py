# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Fork bomb, bounded: at most 2**3 processes even if every defence failed."""
import os

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        for i in range(3):
            os.fork()
        return ep.read_new()
