# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Builds a class by calling a metaclass with a plain dict, so that its namespace (an
__array_interface__ pointing at arbitrary memory, say) never passes the class hook or the
no-underscore rule."""
import typing


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        Reader = typing.ABCMeta("Reader", (object,), {})
        return ep.read_new()
