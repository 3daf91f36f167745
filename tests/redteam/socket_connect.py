# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""Opens a network connection."""
import socket

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        s = socket.create_connection(("1.1.1.1", 80), timeout=1)
        return ep.read_new()
