# ruff: noqa
# expect: forbidden
"""Reaches sys (and os.environ) through an attribute of an allowed module."""
import typing

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        env = typing.sys.modules["os"].environ
        return ep.read_new()
