"""An evaluation started ahead (evaluation.start_sandboxed): its local workers and sandbox
processes start at once and wait before their first batch; `result()` gives exactly what
evaluate_sandboxed gives, `cancel()` leaves no process, temporary directory or verdict behind.
Discovery starts a candidate's sweep so while its smoke run runs (loop.evaluate_candidate)."""

from __future__ import annotations

import tempfile
import threading
from typing import Any

import pytest

from autotts.sandbox import supervisor
from autotts.sandbox.evaluation import evaluate_sandboxed, start_sandboxed
from autotts.units import EvalProtocol
from tests.test_sandbox import FAST, _children_of, parent, synthetic_store  # noqa: F401 (fixture)

STORES = [synthetic_store(seed=0), synthetic_store(seed=1)]

VOTE = '''
class Vote:
    NAME = "vote"

    @staticmethod
    def schedule(beta):
        return {"k": 1 + int(4 * beta)}

    def __init__(self, k=1):
        self.k = k

    def run(self, ep):
        ep.trace("start", k=self.k)
        answers = ep.read_new_many(self.k).tolist()
        return max(set(answers), key=answers.count)
'''


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The sandbox processes' temporary directories go here (workers are forks: they inherit
    tempfile's choice)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _held(monkeypatch) -> threading.Event:
    """Set once a task (here, in this process) waits at its gate before its first batch."""
    held = threading.Event()
    release = supervisor._release

    def spy(c: Any, sel: Any, task: Any) -> None:
        release(c, sel, task)
        if task.state == "held":
            held.set()

    monkeypatch.setattr(supervisor, "_release", spy)
    return held


@pytest.mark.usefixtures("parent")
def test_started_ahead_gives_what_evaluate_sandboxed_gives(private_tmp):
    """Rows, episodes, traces and errors of an evaluation started ahead (its workers held
    before their first batch for a while) are those of evaluate_sandboxed."""
    proto = EvalProtocol(draws=3)
    kw = dict(limits=FAST, workers=2, episodes=True, traces=True, trace_draws=2,
              on_error="record")
    whole = evaluate_sandboxed(VOTE, STORES, [0.0, 0.5, 1.0], proto, **kw)
    pending = start_sandboxed(VOTE, STORES, [0.0, 0.5, 1.0], proto, **kw)
    threading.Event().wait(1.0)  # the sandbox processes start (and wait) meanwhile
    ahead = pending.result()
    assert (ahead.rows, ahead.episodes, ahead.traces, ahead.errors) == \
        (whole.rows, whole.episodes, whole.traces, whole.errors)
    assert ahead.traces and len(ahead.pids) == 2
    assert list(private_tmp.iterdir()) == []


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("wait", [0.0, 0.05, 1.0])
def test_a_cancelled_start_leaves_nothing_behind(private_tmp, wait):
    """Called off at once (the workers never start a sandbox process), while the sandbox
    processes start (killed) or once they wait (told to stop): no process (the `parent`
    fixture), no temporary directory, no pipe, nothing to return."""
    pending = start_sandboxed(VOTE, STORES, [0.0, 0.5, 1.0], EvalProtocol(draws=3),
                              limits=FAST, workers=2)
    threading.Event().wait(wait)
    pending.cancel()
    assert list(private_tmp.iterdir()) == []
    assert _children_of(__import__("os").getpid()) == []
    with pytest.raises(RuntimeError):
        pending.result()


def _gated_task(monkeypatch, after_held: bool, record: str) -> tuple[str, list[Any]]:
    """One gated task in this process (a request without its deadline, as a started-ahead
    one is), the gate written from a thread (at once, or once the task is held): what run_sandbox_task returned, and each sandbox process's exit status when
    the supervisor closed it (None: still running, then killed)."""
    import os

    from autotts.sandbox.evaluation import _Gate, run_sandbox_task
    from autotts.sandbox.supervisor import _Child

    statuses: list[Any] = []
    close = _Child.close

    def spy_close(c: Any) -> None:
        statuses.append(c.proc.poll())
        close(c)

    monkeypatch.setattr(_Child, "close", spy_close)
    held = _held(monkeypatch)
    gate = _Gate()

    def write() -> None:
        held.wait(30)
        os.write(gate.w, record)

    if not after_held:
        os.write(gate.w, record)

    from autotts.sandbox.evaluation import _plan

    plan = _plan(VOTE, STORES, [0.0, 1.0], EvalProtocol(draws=2), limits=FAST)
    thread = threading.Thread(target=write) if after_held else None
    if thread is not None:
        thread.start()
    try:
        status, _ = run_sandbox_task(plan.datas, plan.request, plan.units, 1000, gate)
    finally:
        held.set()
        if thread is not None:
            thread.join()
        gate.close()
    return status, statuses


@pytest.mark.usefixtures("parent")
def test_a_task_stopped_before_it_starts_starts_nothing(monkeypatch):
    """A stop record already there when the task begins: no sandbox process is started."""
    status, statuses = _gated_task(monkeypatch, False, b"x" * 9)
    assert status == "cancelled" and statuses == []


@pytest.mark.usefixtures("parent")
def test_a_held_sandbox_told_to_stop_exits_cleanly(monkeypatch):
    """Stopped at the gate, the sandbox process gets a stop frame and exits by itself (status
    0), not killed; the task is cancelled."""
    status, statuses = _gated_task(monkeypatch, True, b"x" * 9)
    assert status == "cancelled" and statuses == [0]


@pytest.mark.usefixtures("parent")
def test_a_held_sandbox_let_go_runs_its_batches(monkeypatch):
    """Let go at the gate (a deadline), the task runs as an ungated one."""
    import struct
    import time

    status, statuses = _gated_task(monkeypatch, True,
                                   b"g" + struct.pack("<d", time.time() + 60))
    assert status == "ok" and statuses == [0]


@pytest.mark.usefixtures("parent")
def test_a_gate_past_its_deadline_times_out_at_once(monkeypatch):
    """The deadline the gate gives is the evaluation's: one already past ends the task with
    the wall-clock timeout, as for an ungated task called then."""
    import struct
    import time

    status, _ = _gated_task(monkeypatch, True, b"g" + struct.pack("<d", time.time() - 1))
    assert status == "verdict"


def test_the_loop_starts_the_sweep_during_the_smoke_and_calls_it_off_when_it_fails(
        tmp_path, monkeypatch, private_tmp):
    """With two workers, evaluate_candidate starts the sweep's first evaluation before the
    smoke: a candidate that passes gets the files it gets without the start ahead; one whose
    smoke fails gets the same verdict, and the started sweep is called off (nothing left)."""
    from autotts.discover.candidates import SandboxBackend, subset_store
    from autotts.discover.loop import Discovery
    from tests.discover_helpers import BROKEN, GOOD, config, make_env

    env = make_env(tmp_path)
    d = Discovery(config(env, tmp_path / "run", None, workers=2, allow_weak_sandbox=True))
    smoke = subset_store(d.search_stores[0], d.cfg.smoke_questions)
    calls: list[str] = []
    start = SandboxBackend.start

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        pending = start(self, *a, **k)
        calls.append("started" if pending is not None else "none")
        if pending is not None:
            cancel = pending.cancel

            def spy_cancel() -> None:
                calls.append("cancel")
                cancel()

            pending.cancel = spy_cancel
        return pending

    out: dict[str, Any] = {}
    for source, name in ((GOOD, "good"), (BROKEN, "broken")):
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        for mode in ("ahead", "plain"):
            calls.clear()
            if mode == "ahead":
                monkeypatch.setattr(SandboxBackend, "start", spy)
            else:
                monkeypatch.setattr(SandboxBackend, "start", lambda *a, **k: None)
            out[name, mode] = d.evaluate_candidate(path, source, smoke, fname=f"{name}.py")
            out[name, mode, "calls"] = list(calls)
    assert out["good", "ahead"] == out["good", "plain"]
    assert out["good", "ahead"][0]["kind"] == "ok"
    assert out["good", "ahead", "calls"][0] == "started"
    assert out["broken", "ahead"] == out["broken", "plain"]
    assert out["broken", "ahead"][0]["stage"] == "smoke"
    assert out["broken", "ahead", "calls"][:2] == ["started", "cancel"]
    assert list(private_tmp.iterdir()) == []
    assert _children_of(__import__("os").getpid()) == []
    d.close()

