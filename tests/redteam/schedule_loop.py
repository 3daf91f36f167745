# ruff: noqa
# expect: timeout
# limits: episode_seconds=1.0
"""schedule() never returns."""


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        while True:
            pass

    def run(self, ep):
        return ep.read_new()
