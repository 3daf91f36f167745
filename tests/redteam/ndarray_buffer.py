# ruff: noqa
# expect: forbidden
"""Reinterprets raw memory as object pointers through np.ndarray(buffer=...)."""
import numpy as np

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        raw = np.zeros(1, dtype=np.int64)
        obj = np.ndarray((1,), dtype=object, buffer=raw)
        return ep.read_new()
