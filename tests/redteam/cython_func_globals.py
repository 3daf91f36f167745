# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reaches builtins.open through a Cython function's func_globals."""
import numpy as np

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        b = np.random.default_rng.func_globals["__builtins__"]
        b.open("__CANARY__", "w")
        return ep.read_new()
