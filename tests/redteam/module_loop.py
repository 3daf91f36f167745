# ruff: noqa
# expect: timeout
# limits: episode_seconds=1.0
"""Loops forever while the module is executed."""
while True:
    pass

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
