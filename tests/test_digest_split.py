"""The digest's ledger replays split over forks of the calling process (make_digest(...,
processes=N)): the same digest as one process, whatever happens to a fork (it dies, it cannot
be started), the same error where the caller's own part raises, no fork left behind either way,
and the same from several threads at once. Also the prefix-majority table against its plain
definition."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import numpy as np
import pytest

import autotts.discover.digest as digest_mod
from autotts.discover.digest import SearchData, attach_answers, make_digest
from autotts.evaluate import EvalProtocol, evaluate
from autotts.synth import SynthParams, generate

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")


@pytest.fixture(scope="module")
def sweep() -> tuple[list[Any], EvalProtocol, Any, Any, Any]:
    stores = [generate(SynthParams(questions=8, branches=20, seed=21, model="split-a",
                                   benchmark="s")),
              generate(SynthParams(questions=5, branches=12, seed=22, model="split-b",
                                   benchmark="s"))]
    proto = EvalProtocol(draws=3, probe_cost=7)
    rows: list[Any] = []
    eps: list[Any] = []
    trs: list[Any] = []
    for c in ("parallel_probe", "st_bon", "asc"):
        ev = evaluate(c, stores, [0.0, 0.5, 1.0], proto, episodes=True, traces=True)
        attach_answers(ev.traces or [], ev.episodes or [])
        rows += ev.rows
        eps += ev.episodes or []
        trs += ev.traces or []
    return stores, proto, rows, eps, trs


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


class _Forked:
    """Records the pids digest forks (os.fork wrapped while the test runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pids: list[int] = []
        real = os.fork

        def fork() -> int:
            pid = real()
            if pid:
                self.pids.append(pid)
            return pid

        monkeypatch.setattr(os, "fork", fork)

    def all_reaped(self) -> bool:
        for pid in self.pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # reaped already: what we want
            return False
        return True


def test_split_equals_one_process(sweep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stores, proto, rows, eps, trs = sweep
    one = make_digest(SearchData(stores, proto), rows, eps, trs, processes=1)
    forked = _Forked(monkeypatch)
    for n in (2, 3):
        assert _json(make_digest(SearchData(stores, proto), rows, eps, trs, processes=n)) \
            == _json(one)
    assert len(forked.pids) == 1 + 2 and forked.all_reaped()


def test_a_fork_that_dies_leaves_its_share_to_the_caller(
        sweep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stores, proto, rows, eps, trs = sweep
    one = make_digest(SearchData(stores, proto), rows, eps, trs, processes=1)
    parent = os.getpid()
    real = digest_mod._LedgerJob.__call__

    def dies_in_fork(self: Any, share: Any) -> Any:
        if os.getpid() != parent:
            os._exit(3)
        return real(self, share)

    monkeypatch.setattr(digest_mod._LedgerJob, "__call__", dies_in_fork)
    forked = _Forked(monkeypatch)
    got = make_digest(SearchData(stores, proto), rows, eps, trs, processes=2)
    assert _json(got) == _json(one)
    assert len(forked.pids) == 1 and forked.all_reaped()


def test_no_fork_possible(sweep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stores, proto, rows, eps, trs = sweep
    one = make_digest(SearchData(stores, proto), rows, eps, trs, processes=1)

    def refuse() -> int:
        raise OSError("fork refused")

    monkeypatch.setattr(os, "fork", refuse)
    assert _json(make_digest(SearchData(stores, proto), rows, eps, trs, processes=2)) \
        == _json(one)


def test_an_error_of_the_caller_kills_and_reaps_the_fork(
        sweep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An episode row that raises (after the fork started) raises as with one process, and the
    fork, still replaying, is killed and reaped."""
    stores, proto, rows, eps, trs = sweep
    bad = [dict(e) for e in eps]
    bad[7]["question"] = "seven"
    with pytest.raises(ValueError) as one:
        make_digest(SearchData(stores, proto), rows, bad, trs, processes=1)
    forked = _Forked(monkeypatch)
    with pytest.raises(ValueError) as split:
        make_digest(SearchData(stores, proto), rows, bad, trs, processes=2)
    assert str(split.value) == str(one.value)
    assert len(forked.pids) == 1 and forked.all_reaped()


def test_an_error_in_a_share_is_raised_as_one_process_raises_it(sweep: Any) -> None:
    stores, proto, rows, eps, trs = sweep
    bad = [dict(t) for t in trs]
    bad[len(bad) // 2]["draw"] = "x"  # planned in no share: one process meets it in turn
    bad[len(bad) - 3]["events"] = [{"ev": "advance_many", "tokens": 1, "idx": [0]}, 5]
    outcomes = []
    for n in (1, 2):
        with pytest.raises(Exception) as e:
            make_digest(SearchData(stores, proto), rows, eps, bad, processes=n)
        outcomes.append((type(e.value), str(e.value)))
    assert outcomes[0] == outcomes[1]
    # Only an event that is not a mapping, late in the traces, in a fork's share: the fork
    # fails, and the caller raises what one process raises.
    bad[len(bad) // 2]["draw"] = trs[len(bad) // 2]["draw"]
    outcomes = []
    for n in (1, 2):
        with pytest.raises(AttributeError) as e:
            make_digest(SearchData(stores, proto), rows, eps, bad, processes=n)
        outcomes.append(str(e.value))
    assert outcomes[0] == outcomes[1]


def test_several_threads_at_once(sweep: Any) -> None:
    """Threads each with a SearchData of their own, and threads sharing one under a lock (as the
    loop calls it), forking at the same time: every digest is the one-process digest."""
    stores, proto, rows, eps, trs = sweep
    want = _json(make_digest(SearchData(stores, proto), rows, eps, trs, processes=1))
    shared = SearchData(stores, proto)
    lock = threading.Lock()
    got: list[str] = []
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            if k % 2:
                with lock:
                    d = make_digest(shared, rows, eps, trs, processes=2)
            else:
                d = make_digest(SearchData(stores, proto), rows, eps, trs, processes=2)
            got.append(_json(d))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and got == [want] * 6


def test_prefix_table_is_the_plain_majority() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        rows = int(rng.integers(0, 6))
        seqs = [rng.integers(-3, int(rng.integers(1, 6)), size=int(rng.integers(0, 14)))
                for _ in range(rows)]
        gold = rng.integers(-1, 4, size=rows)
        table, lens = digest_mod._prefix_majority_right(seqs, gold)
        for r in range(rows):
            assert table[r, : lens[r] + 1].tolist() == digest_mod._plain_prefix_right(
                seqs[r].tolist(), int(gold[r]))


def test_the_fork_holds_none_of_the_callers_descriptors(
        sweep: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A pipe the caller (or another of its threads) has open is closed in the fork: its reader
    sees the end when the caller closes it, not when the fork ends."""
    stores, proto, rows, eps, trs = sweep
    r, w = os.pipe()
    parent = os.getpid()
    real = digest_mod._LedgerJob.__call__
    seen = tmp_path / "seen.txt"

    def look(self: Any, share: Any) -> Any:
        if os.getpid() != parent:
            try:
                os.fstat(w)
                state = "open"
            except OSError:
                state = "closed"
            seen.write_text(state)
        return real(self, share)

    monkeypatch.setattr(digest_mod._LedgerJob, "__call__", look)
    try:
        make_digest(SearchData(stores, proto), rows, eps, trs, processes=2)
    finally:
        os.close(r)
        os.close(w)
    assert seen.read_text() == "closed"


def test_traces_as_an_iterator(sweep: Any) -> None:
    stores, proto, rows, eps, trs = sweep
    want = _json(make_digest(SearchData(stores, proto), rows, eps, trs, processes=1))
    for n in (1, 2):
        got = make_digest(SearchData(stores, proto), rows, eps, iter(trs), processes=n)
        assert _json(got) == want


def test_split_by_default_only_with_a_core_idle(
        sweep: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """processes=None forks where a core is idle now (/proc/loadavg's runnable count), and
    only for traces long enough to pay for it."""
    stores, proto, rows, eps, trs = sweep
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(digest_mod.sys, "platform", "linux")
    load = tmp_path / "loadavg"
    monkeypatch.setattr(digest_mod, "LOADAVG", str(load))
    many = trs * (digest_mod.SPLIT_EVENTS // max(1, sum(len(t["events"]) for t in trs)) + 1)
    load.write_text("0.50 0.40 0.30 1/300 4242\n")
    assert digest_mod._process_count(None, many) == 2
    assert digest_mod._process_count(None, trs[:3]) == 1
    load.write_text("3.10 2.40 1.30 2/300 4242\n")
    assert digest_mod._process_count(None, many) == 1
    forked = _Forked(monkeypatch)
    load.write_text("0.50 0.40 0.30 1/300 4242\n")
    want = _json(make_digest(SearchData(stores, proto), rows, eps, many, processes=1))
    assert _json(make_digest(SearchData(stores, proto), rows, eps, many)) == want
    assert len(forked.pids) == 1 and forked.all_reaped()
