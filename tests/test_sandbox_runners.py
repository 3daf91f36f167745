"""A batch's episodes run in greenlets that live on after their episode (autotts.sandbox.child:
Scheduler._run_episodes): a runner whose episode ended is parked and runs the next episode that
starts. Reusing them must change nothing: rows, errors and refusals are those of a greenlet per
episode, and a handle kept from a runner's earlier episode is refused as one from another
episode always was."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autotts.evaluate import EvalProtocol, evaluate
from autotts.sandbox import evaluate_sandboxed
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)

N_QUESTIONS = 6
STORE = synthetic_store(n_questions=N_QUESTIONS)
PROTO = EvalProtocol(draws=2)
# One or two episodes live at once: each later episode starts in a parked runner.
NARROW = (replace(FAST, window=1), replace(FAST, window=2))

# Keeps every handle; each episode also acts on the first episode's handle (ended by then,
# except in the first episode), and catches the refusal so that the episode goes on.
_KEEPER = '''
class Keeper:
    NAME = "keeper"
    held = []

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        Keeper.held.append(ep)
        first = Keeper.held[0]
        if first is not ep:
            try:
                first.read_new()
            except Exception as e:
                ep.trace("refused", message=str(e))
        ep.branch()
        return None
'''


def _sandboxed(source: str, limits, **kw):
    return evaluate_sandboxed(source, [STORE], [0.0, 0.5], PROTO, filename="keeper.py",
                              limits=limits, traces=True, episodes=True, on_error="record", **kw)


@pytest.mark.usefixtures("parent")
def test_reused_runners_change_no_row_and_refuse_kept_handles(tmp_path):
    """The same rows and episodes whether each episode has a fresh runner (the default window:
    all of a batch's episodes live at once) or runners are reused (a window of one or two
    episodes), and as in-process; with one episode at a time, every later episode's use of the
    first one's handle is refused as a handle of an ended episode."""
    wide = _sandboxed(_KEEPER, FAST)
    for limits in NARROW:
        narrow = _sandboxed(_KEEPER, limits)
        assert narrow.rows == wide.rows
        assert narrow.episodes == wide.episodes
        assert not narrow.errors
        refused = [e["message"] for t in narrow.traces for e in t["events"]
                   if e["ev"] == "refused"]
        # each batch: every episode but the first
        assert len(refused) == 2 * (N_QUESTIONS - 1) * PROTO.draws
        if limits.window == 1:
            assert set(refused) == {"the episode has ended"}  # the engine's words
    path = tmp_path / "keeper.py"
    path.write_text(_KEEPER)
    ip = evaluate(str(path), [STORE], [0.0, 0.5], PROTO, episodes=True, on_error="record")
    assert ip.rows == wide.rows


# With code execution (no RestrictedPython): the kept handle of the runner's own earlier
# episode is reopened (its `_closed` flag cleared) and used from the next episode, which runs in
# the same runner. It must be refused as a handle of another episode, never taken as the
# current episode's own.
_REOPEN = '''
class Reopen:
    NAME = "reopen"
    held = []

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        Reopen.held.append(ep)
        if len(Reopen.held) > 1:
            old = Reopen.held[-2]
            old._closed = False
            try:
                old.read_new()
            except Exception as e:
                raise ValueError("refused: " + str(e))
            raise ValueError("taken")
        ep.branch()
        return None
'''


@pytest.mark.usefixtures("parent")
def test_a_reopened_handle_of_the_runners_last_episode_is_refused():
    ev = evaluate_sandboxed(_REOPEN, [STORE], [0.5], PROTO, filename="reopen.py",
                            limits=NARROW[0], on_error="record", _unrestricted=True)
    assert len(ev.errors) == (N_QUESTIONS - 1) * PROTO.draws
    assert all(e["message"].startswith(
        "ValueError: refused: this episode handle belongs to another episode (")
        for e in ev.errors), ev.errors[0]
