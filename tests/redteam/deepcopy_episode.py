# ruff: noqa
# expect: invalid_action
"""Deep-copies the episode through dataclasses.asdict, explores the copy for free, then answers
on the original."""
from dataclasses import asdict, dataclass


@dataclass
class Box:
    ep: object


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        twin = asdict(Box(ep))["ep"]
        peek = twin.read_new_many(twin.pool_size)
        return int(peek[0])
