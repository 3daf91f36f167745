# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Exits the interpreter through sys."""
import sys

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        sys.exit(0)
