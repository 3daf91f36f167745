# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Starts a thread."""
import threading

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        threading.Thread(target=lambda: None).start()
        return ep.read_new()
