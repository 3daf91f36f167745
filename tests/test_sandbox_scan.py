"""The judge's /proc scan of a sandbox's processes (lockdown.live_sandbox_processes) with the
processes its first scan found foreign skipped while they live (lockdown.ForeignProcesses):
the same answer as a full scan, a new process (a descendant, or one that reuses a foreign
process's number) is always read, and an exited foreign process is forgotten."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from autotts.sandbox import lockdown
from autotts.sandbox.lockdown import ForeignProcesses, live_sandbox_processes

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open") or not os.path.isdir("/proc"),
                                reason="pidfds and /proc (Linux 5.3+)")

# A sandbox's first process, in a session of its own: forks a child for each line it reads.
_LEADER = """
import os, sys, time
for line in sys.stdin:
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    print("forked", flush=True)
"""


def _leader() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _LEADER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def _end(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def test_foreign_processes_are_skipped_and_the_answer_is_a_full_scans(monkeypatch):
    p = _leader()
    foreign = ForeignProcesses()
    try:
        base = live_sandbox_processes(p.pid, foreign, learn=True)
        assert base == [p.pid] == live_sandbox_processes(p.pid)
        assert foreign.fd and p.pid not in foreign.fd
        assert os.getpid() in foreign.fd  # this process: another session, no descendant
        # Later scans read only what is not known to be foreign (and alive).
        opened = []
        real_open = lockdown.os.open
        monkeypatch.setattr(lockdown.os, "open", lambda path, *a: (opened.append(path),
                                                                   real_open(path, *a))[1])
        assert live_sandbox_processes(p.pid, foreign) == base
        skipped = len(opened)
        opened.clear()
        assert live_sandbox_processes(p.pid) == base
        assert skipped < len(opened) - len(foreign.fd) // 2
        # A process that appears after the first scan is read, and counted: the sandbox's
        # first process forks one.
        p.stdin.write("x\n")
        p.stdin.flush()
        assert p.stdout.readline() == "forked\n"
        now = live_sandbox_processes(p.pid, foreign)
        assert len(now) == 2 and p.pid in now
        assert now == live_sandbox_processes(p.pid)
    finally:
        foreign.close()
        _end(p)


def test_an_exited_foreign_process_is_forgotten_before_the_next_scan():
    """Its number may be another process's by then (one of the sandbox's): it must be read."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    p = _leader()
    foreign = ForeignProcesses()
    try:
        live_sandbox_processes(p.pid, foreign, learn=True)
        assert other.pid in foreign.fd
        os.kill(other.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while other.pid in foreign.fd and time.monotonic() < deadline:
            live_sandbox_processes(p.pid, foreign)  # an unreaped zombie is gone too
            time.sleep(0.01)
        assert other.pid not in foreign.fd
        other.wait()
        assert live_sandbox_processes(p.pid, foreign) == [p.pid]
    finally:
        foreign.close()
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(other.pid, signal.SIGKILL)
        other.wait()
        _end(p)


def test_only_the_first_scan_learns():
    """A process that appears later and is no part of the sandbox is read in every scan (it
    could have been the sandbox's own, hidden from one scan by a race)."""
    p = _leader()
    foreign = ForeignProcesses()
    try:
        live_sandbox_processes(p.pid, foreign, learn=True)
        late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                start_new_session=True)
        try:
            live_sandbox_processes(p.pid, foreign)
            assert late.pid not in foreign.fd
        finally:
            late.kill()
            late.wait()
    finally:
        foreign.close()
        _end(p)


def test_the_cap_on_pidfds_holds():
    p = _leader()
    foreign = ForeignProcesses(limit=3)
    try:
        assert live_sandbox_processes(p.pid, foreign, learn=True) == [p.pid]
        assert len(foreign.fd) <= 3
        assert live_sandbox_processes(p.pid, foreign) == [p.pid]
    finally:
        foreign.close()
        _end(p)
