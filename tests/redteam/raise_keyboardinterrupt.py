# ruff: noqa
# expect: exception
"""Raises KeyboardInterrupt from run()."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        raise KeyboardInterrupt
