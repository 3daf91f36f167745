# ruff: noqa
# expect: memory
# limits: memory_mb=256
"""Allocates 80 GB at once."""
import numpy as np

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        big = np.ones(10**10)
        return ep.read_new()
