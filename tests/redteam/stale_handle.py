# ruff: noqa
# expect: invalid_action
"""Keeps an ended episode's handle to read branches for free later."""
class Candidate:
    NAME = "candidate"
    held = []
    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        if Candidate.held:
            Candidate.held[0].read_new()
        Candidate.held.append(ep)
        return ep.read_new()
