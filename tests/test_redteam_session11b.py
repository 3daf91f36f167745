"""Red team, session 11 (second): batches without seccomp (lockdown.isolate_batch,
end_leftovers, the session keyring, `batchns`), the judge's secret start order, the β dedupe's
knob_key and the held-out knobs check, and the CLI's one-line usage errors.
"""

from __future__ import annotations

import os

import pytest

from autotts.sandbox import SandboxError
from tests.test_sandbox import FAST, parent  # noqa: F401 (fixture)

# ---- batches without seccomp: kernel objects one batch leaves for the next ---------------------

# Each mark is set once per batch process (at its first episode) and looked for when the
# candidate's module loads (_FCNTL's _AFTER_A_BATCH): a batch that finds the last one's mark
# counts on from a full draw, and _played_more_than_one_draw fails.
_SOCKET_MARKS = '''
import errno
import socket

_NAME = b"\\0autotts-mark-abstract"
_DONE = []


def _taken(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(name)
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()
    return False


def _bind(name, tries=200):
    # the last batch's socket may still be bound until the kernel frees it
    import time
    for _ in range(tries):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind(name)
            return s
        except OSError:
            s.close()
            time.sleep(0.005)
    return None


def _plain():
    if not _DONE:
        _DONE.append(_bind(_NAME))


def _inflight():
    """The bound socket and a pair of sockets sent in a message the pair holds itself (an
    SCM_RIGHTS cycle): no descriptor refers to them once the batch exits, and only the
    kernel's garbage collector of in-flight sockets frees them."""
    if _DONE:
        return
    s = _bind(_NAME)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    if s is not None:
        socket.send_fds(a, [b"x"], [s.fileno(), a.fileno(), b.fileno()])
    _DONE.append((s, a, b))


def _udp_taken():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", 47123))
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()
    return False


def _udp_inflight():
    """A UDP port (no interface is up, but a port of any address can be bound), kept by the
    same cycle."""
    if _DONE:
        return
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("0.0.0.0", 47123))
    except OSError:
        pass
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    socket.send_fds(a, [b"x"], [u.fileno(), a.fileno(), b.fileno()])
    _DONE.append((u, a, b))


# POSIX message queues (mq_open, x86_64's 240: the name without its slash), and the UTS
# namespace's host name (sethostname needs CAP_SYS_ADMIN in the user namespace that owns it:
# the sandbox's, not the batch's own).
_libc.syscall.restype = ctypes.c_long


def _mq(create):
    flags = (0o100 | 0o200 | 2) if create else 2  # O_CREAT | O_EXCL | O_RDWR, or O_RDWR
    return _libc.syscall(240, b"autotts-mark", flags, 0o600, None) >= 0


def _set_hostname():
    try:
        socket.sethostname("autotts-mark")
    except OSError:
        pass


_MARKS["abstract"] = (lambda: _taken(_NAME), _plain)
_MARKS["abstract-inflight"] = (lambda: _taken(_NAME), _inflight)
_MARKS["udp-inflight"] = (_udp_taken, _udp_inflight)
_MARKS["mqueue"] = (lambda: _mq(False), lambda: _mq(True))
_MARKS["hostname"] = (lambda: socket.gethostname() == "autotts-mark", _set_hostname)
'''


def _socket_source(how: str) -> str:
    from tests.test_redteam_session7 import _FCNTL

    return _FCNTL.replace('_seen, _mark = _MARKS["{how}"]',
                          _SOCKET_MARKS + f'_seen, _mark = _MARKS["{how}"]')


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("seccomp", [False, True], ids=["no-seccomp", "seccomp"])
@pytest.mark.parametrize("how", [
    "abstract",  # held: the name is freed when the batch's socket is closed at its exit
    # Found open and fixed: the cycle kept the socket, and its name in the sandbox's network
    # namespace, past the batch's exit (the next three batches found it, every run). Each
    # batch has a network namespace of its own now (isolate_batch).
    "abstract-inflight",
    "udp-inflight",  # the same with a UDP port; fixed by the same namespace
    "mqueue",  # held: each batch's own IPC namespace
    "hostname",  # held: refused (the UTS namespace is owned by the sandbox's user namespace)
])
def test_a_socket_name_a_port_or_a_queue_carries_nothing_between_batches(how, seccomp,
                                                                         monkeypatch):
    """Without seccomp: the mark is gone (or was never set) when the next batch looks. With
    seccomp: socket(), mq_open and sethostname are refused, in every batch alike."""
    from tests.test_redteam_session5 import _no_seccomp
    from tests.test_redteam_session7 import _FCNTL_COUNT, _played_more_than_one_draw
    from tests.test_sandbox_boundary import _controller, _run

    if how in ("mqueue",) and os.uname().machine != "x86_64":
        pytest.skip("x86_64 system call numbers")
    if not seccomp:
        _no_seccomp(monkeypatch)
    try:
        ev = _run(_controller(_FCNTL_COUNT, _socket_source(how)), on_error="record")
    except SandboxError as e:  # with seccomp the module fails where it first looks
        assert seccomp, str(e.verdict)
        assert "Operation not permitted" in e.verdict.message, str(e.verdict)
        return
    _played_more_than_one_draw(ev)
