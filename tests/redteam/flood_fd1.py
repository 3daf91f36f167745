# ruff: noqa
# expect: ok
"""Makes numpy print floating-point errors to the process's real stdout, a lot."""
import numpy as np

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        np.seterr(all="print")
        for i in range(20_000):
            np.float64(1.0) / np.float64(0.0)
        return ep.read_new()
