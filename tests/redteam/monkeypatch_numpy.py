# ruff: noqa
# expect: forbidden
"""Patches numpy so that the engine's accounting counts nothing."""
import numpy as np

np.count_nonzero = lambda a: 0

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
