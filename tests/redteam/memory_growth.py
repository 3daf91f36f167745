# ruff: noqa
# expect: memory
# limits: memory_mb=256
"""Grows a list until memory runs out."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        blocks = []
        while True:
            blocks.append(bytearray(16 * 2**20))
