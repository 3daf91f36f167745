# ruff: noqa
# expect: forbidden
# runtime: exception
"""Reads a held-out store whose path it guessed."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        data = open("__HELDOUT__").read()
        return ep.read_new()
