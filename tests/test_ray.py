"""The Ray executor gives the local executor's results bit for bit, in a local runtime and on a
head started by the test (on 127.0.0.1 only, stopped by PID), and reports task failures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotts.evaluate import EvaluationError, Protocol, evaluate
from tests.conftest import branch, make_store

ray = pytest.importorskip("ray") if os.environ.get("CI", "").lower() != "true" else __import__("ray")

pytestmark = pytest.mark.slow
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def stores():
    return [
        make_store(
            [
                (g, [branch([a, g, g][: 1 + i % 3], 10 + 7 * i, g if i % 3 else a) for i in range(12)])
                for g, a in (("A", "B"), ("C", "A"), ("B", "B"))
            ],
            model=f"m{k}",
        )
        for k in range(3)
    ]


def _same(a, b):
    assert [(r["store"], r["beta"], r["accuracy"], r["tokens"]) for r in a.rows] == [
        (r["store"], r["beta"], r["accuracy"], r["tokens"]) for r in b.rows
    ]


@pytest.fixture
def local_ray(monkeypatch):
    for k, v in LOOPBACK_ENV.items():
        monkeypatch.setenv(k, v)
    yield
    ray.shutdown()


@pytest.mark.parametrize("controller", ["parallel_probe", "asc"])
def test_local_runtime_matches_local_executor(local_ray, stores, controller):
    proto = Protocol(draws=6)
    local = evaluate(controller, stores, [0.0, 0.5, 1.0], proto, workers=2)
    remote = evaluate(controller, stores, [0.0, 0.5, 1.0], proto, executor="ray", workers=2)
    _same(local, remote)


CRASHES_ON_M1 = '''
class CrashOnSecondStore:
    NAME = "crash_on_m1"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        if ep.pool_size == 12 and ep.delta == 10 and ep.no_answer_class == -1:
            answers = ep.read_new_many(3)
            if int(answers[0]) == 99:
                return 0
        raise RuntimeError("boom")
'''


def test_task_failure_is_reported(local_ray, stores, tmp_path: Path):
    path = tmp_path / "crash.py"
    path.write_text(CRASHES_ON_M1)
    with pytest.raises(EvaluationError, match=r"crash_on_m1 on m0/toy, question 0.*boom"):
        evaluate(str(path), stores, [0.0], Protocol(draws=2), executor="ray", workers=2)
    recorded = evaluate(str(path), stores, [0.0], Protocol(draws=2), executor="ray",
                        on_error="record")
    assert [r["errors"] for r in recorded.rows] == [6, 6, 6]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_head_on_loopback_matches_local_executor(stores, monkeypatch):
    port = _free_port()
    env = {**os.environ, **LOOPBACK_ENV}
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        for k, v in {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token"}.items():
            monkeypatch.setenv(k, v)
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.init(address=f"127.0.0.1:{port}", include_dashboard=False,
                         log_to_driver=False)
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        proto = Protocol(draws=4)
        remote = evaluate("cmc", stores, [0.0, 1.0], proto, executor="ray")
        local = evaluate("cmc", stores, [0.0, 1.0], proto)
        _same(local, remote)
    finally:
        ray.shutdown()
        # Stop what we started, by process group: never `ray stop`, which stops every Ray on
        # the machine.
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
