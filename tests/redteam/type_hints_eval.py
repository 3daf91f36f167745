# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Gets eval() of a string annotation through typing.get_type_hints."""
import typing


class Box:
    x: "__import__('os').system('true')"


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        typing.get_type_hints(Box)
        return ep.read_new()
