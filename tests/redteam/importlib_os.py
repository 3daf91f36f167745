# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Imports os through importlib."""
import importlib

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        importlib.import_module("os").system("true")
        return ep.read_new()
