"""Groups of a batch's episodes in the sandbox process: two take turns where a worker has two
cores to itself, one where the workers alone fill the cores (evaluation.round_groups). Same
rows either way; one group serves the same actions in fewer rounds."""

from __future__ import annotations

import pytest

from autotts.evaluate import EvalProtocol, evaluate
from autotts.executors import LocalExecutor
from autotts.sandbox import evaluate_sandboxed
from autotts.sandbox import evaluation as evaluation_module
from autotts.sandbox.judge import UnitJudge
from tests.test_sandbox import FAST, synthetic_store

STEPS = '''
class Steps:
    NAME = "steps"

    @staticmethod
    def schedule(beta):
        return {"width": 2 + int(4 * beta)}

    def __init__(self, width=2):
        self.width = width

    def run(self, ep):
        ep.branch_many(min(self.width, ep.pool_size), probe=True)
        for _ in range(5):
            if not ep.running.any():
                break
            ep.advance_many(ep.running)
        latest = ep.latest
        return int(latest.max()) if len(latest) else None
'''


class _FakeRay:
    parallelism = 4

    def map_stores(self) -> None:  # what _run tells a Ray executor by
        pass


@pytest.mark.parametrize(("workers", "cores", "groups"),
                         [(1, 2, 2), (2, 2, 1), (1, 1, 1), (2, 4, 2), (3, 4, 1)])
def test_round_groups_follow_the_cores(monkeypatch, workers, cores, groups):
    monkeypatch.setattr(evaluation_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert evaluation_module.round_groups(LocalExecutor(workers)) == groups


def test_ray_tasks_keep_two_groups():
    assert evaluation_module.round_groups(_FakeRay()) == 2


def test_one_group_serves_the_same_rows_in_fewer_rounds(tmp_path, monkeypatch):
    store = synthetic_store(n_questions=6)
    path = tmp_path / "steps.py"
    path.write_text(STEPS)
    proto = EvalProtocol(draws=3)
    rounds: list[int] = []
    serve = UnitJudge.serve

    def counting(self, *a, **kw):
        rounds.append(1)
        return serve(self, *a, **kw)

    monkeypatch.setattr(UnitJudge, "serve", counting)  # one worker: the judge runs here
    out = {}
    for groups in (2, 1):
        monkeypatch.setattr(evaluation_module, "round_groups", lambda ex, g=groups: g)
        rounds.clear()
        ev = evaluate_sandboxed(STEPS, [store], [0.0, 1.0], proto, filename=str(path),
                                limits=FAST)
        out[groups] = (ev.rows, ev.actions, len(rounds))
    assert out[1][0] == out[2][0] == evaluate(str(path), [store], [0.0, 1.0], proto).rows
    assert out[1][1] == out[2][1] > 0  # the same actions
    assert out[1][2] < out[2][2]  # in fewer rounds
