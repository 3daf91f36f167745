# ruff: noqa
# expect: forbidden
# runtime: forbidden
"""The classic ().__class__.__bases__[0].__subclasses__() walk."""
class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        subs = ().__class__.__bases__[0].__subclasses__()
        return ep.read_new()
