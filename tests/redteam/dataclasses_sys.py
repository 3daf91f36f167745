# ruff: noqa
# expect: forbidden
"""Reaches sys through dataclasses' module namespace."""
import dataclasses

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        mods = dataclasses.sys.modules
        return ep.read_new()
