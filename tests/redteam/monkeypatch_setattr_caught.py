# ruff: noqa
# expect: forbidden
"""Patches numpy with setattr and swallows the guard's exception."""
import numpy as np

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        try:
            setattr(np, "sum", lambda *a, **k: 0)
        except Exception:
            pass
        return ep.read_new()
