# ruff: noqa
# expect: timeout
# limits: episode_seconds=60,cpu_seconds=3
"""Burns CPU past the CPU-time limit (the per-episode watchdog is generous)."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        while True:
            pass
