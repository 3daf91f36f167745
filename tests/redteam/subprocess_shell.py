# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Runs a shell command that would overwrite the canary."""
import subprocess

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        subprocess.run(["sh", "-c", "echo pwned > __CANARY__"])
        return ep.read_new()
