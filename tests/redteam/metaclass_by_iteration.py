# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reaches a metaclass without naming it: iterating over a namespace of the typing module's
values instead of reading the attribute."""
import typing


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        for value in [typing.NamedTuple, typing.Protocol, typing.Any]:
            for item in [value]:
                pass
        meta = [m for m in typing.ABCMeta.mro()][0]
        return ep.read_new()
