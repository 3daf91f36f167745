# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reads a held-out store through numpy's file readers."""
import numpy as np

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        data = np.loadtxt("__HELDOUT__")
        return ep.read_new()
