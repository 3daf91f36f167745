# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Calls libc through ctypes."""
import ctypes

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ctypes.CDLL(None).system(b"touch __CANARY__")
        return ep.read_new()
