# ruff: noqa
# expect: timeout
# limits: episode_seconds=1.0
"""Never returns."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        while True:
            pass
