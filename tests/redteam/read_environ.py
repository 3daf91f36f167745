# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Reads an API key from the environment."""
import os

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        key = os.environ.get("OPENAI_API_KEY")
        return ep.read_new()
