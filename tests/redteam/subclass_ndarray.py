# ruff: noqa
# expect: forbidden
"""Derives from numpy.ndarray to keep its native attributes."""
import numpy as np


class Arr(np.ndarray):
    pass


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
