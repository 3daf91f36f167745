"""Red team, session 10: greenlets parked between a batch's episodes (child.py Runner /
Scheduler._run_episodes), the judge's /proc scan that skips processes known foreign by pidfd
(lockdown.ForeignProcesses), and the judge's inline advance_many rows, the client's fast path
for masks, engine.branch_indices / running_indices and the wire's one-copy frames.

Found and fixed:
- A handle kept past its episode was refused in the sandbox with words of its own ("this
  episode handle belongs to an episode that has ended") before any check of its arguments,
  and its history() still answered from the mirror. In-process, the engine checks the
  action's arguments over the ended episode's state first (so "branch 5 is not open",
  "PROBE of branch 0 twice at depth 2", ...), then refuses with "the episode has ended", and
  history() of an ended episode is refused. A controller that keeps the last episode's
  handle got other errors, and (through history) other rows, sandboxed than in-process, even
  with a window of one episode, where the sandbox runs them one after another as in-process.
  The client now refuses an ended handle's actions as the engine does (client.py
  _refuse_ended) and its history() as well.

Held (asserted below where cheap): see each test's docstring.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from autotts.evaluate import EvalProtocol, evaluate
from autotts.sandbox import evaluate_sandboxed
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)

STORE = synthetic_store(n_questions=4)
PROTO = EvalProtocol(draws=1)
ONE = replace(FAST, window=1)  # one episode at a time: the order in-process runs them in

# Each episode (but the first) tries every action and read on the handle of the episode before,
# which has ended, and records what it got; the last call (history, uncaught) ends the episode
# with that refusal in-process.
_KEEP = '''
class Keep:
    NAME = "keep"
    held = []

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        Keep.held.append(ep)
        ep.branch_many(10)
        run = [i for i, r in enumerate(ep.running.tolist()) if r]
        fin = [i for i, f in enumerate(ep.finished.tolist()) if f] + [0]
        ep.prune(run[0])
        ep.probe(run[1])
        if len(Keep.held) > 1:
            old = Keep.held[-2]
            r, p = old.running.tolist(), old.pruned.tolist()
            run = [i for i in range(len(r)) if r[i]]
            pr = [i for i in range(len(p)) if p[i]]
            f = [i for i, x in enumerate(old.finished.tolist()) if x] + [0]
            a, b, c = run[0], run[1], pr[0]
            calls = [
                lambda: old.advance(a), lambda: old.advance(c), lambda: old.advance(f[0]),
                lambda: old.advance(17), lambda: old.advance(-1), lambda: old.advance(2**70),
                lambda: old.extend(b), lambda: old.read(c), lambda: old.probe(a),
                lambda: old.probe(b), lambda: old.probe(c), lambda: old.probe(2**64),
                lambda: old.prune(c), lambda: old.prune(a), lambda: old.prune(12),
                lambda: old.prune_many([c]), lambda: old.prune_many([a]),
                lambda: old.prune_many([a, a]), lambda: old.prune_many(old.running),
                lambda: old.prune_many([True]), lambda: old.advance_many([c]),
                lambda: old.advance_many([a, b]), lambda: old.advance_many(old.running),
                lambda: old.advance_many(old.running, 3), lambda: old.advance_many([a], 2**70),
                lambda: old.advance_many([a], -1), lambda: old.advance_many([c], -1),
                lambda: old.advance_many([0, 15]), lambda: old.advance_many([True, False]),
                lambda: old.branch(), lambda: old.branch(2), lambda: old.branch_many(2),
                lambda: old.branch_many(2**70), lambda: old.read_new(),
                lambda: old.read_new_many(1), lambda: old.read_new_many(-1),
                lambda: old.history(13), lambda: old.history(c), lambda: old.depth(a),
                lambda: old.latest_answer(b), lambda: old.history_depths(b).tolist(),
                lambda: old.tokens, lambda: old.num_actions, lambda: old.final_answers.tolist(),
            ]
            for k, call in enumerate(calls):
                try:
                    got = call()
                    ep.trace("ok", k=k, got=str(got))
                except Exception as e:
                    ep.trace("refused", k=k, message=str(e))
            old.history(b)
        return int(ep.latest_answer(run[1]))
'''


@pytest.mark.usefixtures("parent")
def test_a_kept_handle_of_an_ended_episode_is_refused_as_in_process(tmp_path):
    """Same rows, errors and traces sandboxed (one episode at a time, so each later episode
    runs in the parked runner of the last) as in-process."""
    sb = evaluate_sandboxed(_KEEP, [STORE], [0.5], PROTO, filename="keep.py", limits=ONE,
                            traces=True, episodes=True, on_error="record")
    path = tmp_path / "keep.py"
    path.write_text(_KEEP)
    ip = evaluate(str(path), [STORE], [0.5], PROTO, traces=True, episodes=True,
                  on_error="record")
    assert [e["message"] for e in sb.errors] == [e["message"] for e in ip.errors]
    assert [e["message"] for e in sb.errors] == ["the episode has ended"] * 3
    assert sb.rows == ip.rows
    assert sb.episodes == ip.episodes
    assert sb.traces == ip.traces
