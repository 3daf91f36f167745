# ruff: noqa
# expect: ok
"""Not hostile: calls numpy methods whose C code imports numpy internals through the builtins of
the calling (candidate) frame, at module level before any episode ran, and deep-copies its own
objects."""
from dataclasses import asdict, dataclass

import numpy as np

SPREAD = float(np.ones(3).std() + np.ndarray.sum(np.ones(2)))


class Vote:
    def __init__(self, n):
        self.n = n


@dataclass
class Box:
    votes: list


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        copied = asdict(Box([Vote(1), Vote(2)]))
        assert len(copied["votes"]) == 2 and SPREAD == 2.0
        assert isinstance(np.zeros(2), np.ndarray)
        return ep.read_new()
