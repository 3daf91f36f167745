"""Red team, session 11 (second): batches without seccomp (lockdown.isolate_batch,
end_leftovers, the session keyring, `batchns`), the judge's secret start order, the β dedupe's
knob_key and the held-out knobs check, and the CLI's one-line usage errors.

Found and fixed (each test fails without its fix):
- Without seccomp, an abstract UNIX socket (or a UDP port) that a batch sent in a message its
  own socket pair holds (an SCM_RIGHTS cycle) stayed bound in the sandbox's network namespace,
  shared by its batches, until the kernel's in-flight collector ran; the next batches found
  the name. Each batch has a network namespace of its own now (isolate_batch).
- Without seccomp, an open file description lock (F_OFD_SETLK) on the shared stdin pipe
  outlived the batch (it belongs to the description, which the sandbox process holds); the
  next batch read its range with F_GETLK. The sandbox process releases the locks of its shared
  descriptors after each batch.
- Without seccomp, where the sandbox runs as the user who owns the evaluating process's pipes
  (an ordinary user; root without nobody), a batch set the stdin pipe's mode bits or times
  (fchmod, futimens) and the next batch read them with fstat. They are put back after each
  batch.
- The β dedupe (knob_key and the sandbox's own) sorted the keys of dict-valued knobs, which the
  controller receives in schedule()'s order: {"w": {"x": 1, "y": 2}} and {"w": {"y": 2,
  "x": 1}} were one configuration, and β=1 was scored with β=0's episodes.

Left open (strict xfail): the user's count of descriptors in flight in UNIX socket messages,
counted per user in no namespace (the class of the key quota).

Held (asserted): a plain abstract socket, POSIX message queues, the host name; with seccomp,
each of these attacks refused; the unit frame names no question (only the slot, the secret
order's place, tells episodes apart where pools are of one size); the CLI's usage errors stay
one line with status 2 (values with newlines, non-UTF-8 arguments, an empty command, a bad
option before an eager --help); a batch with code execution that leaves bytes of the judge's
stream unread in the shared stdin pipe ends the run (timeout: the zygote misreads every later
frame; no misread frame can be a `unit` of the batch's making), with and without seccomp.
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


# An open file description lock (F_OFD_SETLK) on the stdin pipe, which the sandbox process
# and every batch share (one open file description): it belongs to the description, not the
# process, so it outlives the batch while the sandbox process holds the pipe; a process's
# F_GETLK (a POSIX lock's owner is the process) sees it as a conflict and reads its range.
import struct
import fcntl


def _flock(kind, start):
    return struct.pack("hhqqi4x", kind, 0, start, 1 if start else 0, 0)


def _ofd_lock():
    with contextlib.suppress(OSError):
        fcntl.fcntl(0, 37, _flock(fcntl.F_RDLCK, 12345))  # F_OFD_SETLK


def _ofd_seen():
    try:
        got = fcntl.fcntl(0, fcntl.F_GETLK, _flock(fcntl.F_WRLCK, 0))
    except OSError:
        return False
    return struct.unpack("hhqqi4x", got)[2] == 12345


_MARKS["ofd-lock"] = (_ofd_seen, _ofd_lock)


# The stdin pipe's inode: its mode bits and its times, which its owner may set to any value
# (fchmod, futimens) and anyone reads with fstat. The pipe is the evaluating process's: a batch
# owns it where the sandbox runs as the user who started it (an ordinary user; root without
# the drop to nobody), not as the host's nobody.
def _pipe_mode():
    with contextlib.suppress(OSError):
        os.chmod(0, 0o640)


def _pipe_times():
    with contextlib.suppress(OSError):
        os.utime(0, ns=(12345, 12345))


# The user's count of descriptors in flight in UNIX socket messages (user->unix_inflight),
# counted per user in no namespace: a process may send one only while the count is at most its
# RLIMIT_NOFILE. A socket pair that holds both its sockets in its own queue is freed only by
# the kernel's collector, which only the release of some socket with descriptors in flight
# starts: this batch releases none. Each batch sends until it is refused, so its own count of
# sends says how many the batches before it left (the knobs process included).
def _inflight_room():
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        socket.send_fds(a, [b"x"], [a.fileno(), b.fileno()])
    except OSError:  # ETOOMANYREFS: no room at all
        return 0, limit
    n = 2
    while n < 10 * limit + 10:
        try:
            socket.send_fds(a, [b"x"], [a.fileno()])
        except OSError:
            break
        n += 1
    _DONE.append((a, b))
    return n, limit


_ROOM = []
_MARKS["unix-inflight"] = (lambda: _ROOM.append(_inflight_room()) or _ROOM[0] is not None
                           and _ROOM[0][0] < _ROOM[0][1] + 1, lambda: None)
_MARKS["pipe-mode"] = (lambda: os.fstat(0).st_mode & 0o777 == 0o640, _pipe_mode)
_MARKS["pipe-times"] = (lambda: os.fstat(0).st_mtime_ns == 12345, _pipe_times)
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
    # Found open and fixed: the lock stayed on the shared stdin pipe and the next batch read
    # its offset (a 63-bit register, and as many as it likes); the sandbox process now
    # releases every lock of its shared descriptions after each batch (child._restore_inherited).
    "ofd-lock",
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


# ---- the β dedupe (knob_key): knobs the same to JSON with sorted keys, not to the controller ---

from autotts.evaluate import EvalProtocol, evaluate, knob_key  # noqa: E402
from autotts.sandbox import evaluate_sandboxed  # noqa: E402
from tests.test_sandbox import synthetic_store  # noqa: E402

KSTORE = synthetic_store(n_questions=4)

# A knob whose value is a dict: its keys reach the controller in the order schedule() gave
# them (through the sandbox's JSON as in-process), and this controller reads the order.
ORDERED = '''
class Ordered:
    NAME = "ordered"

    @staticmethod
    def schedule(beta):
        if beta < 0.5:
            return {"w": {"x": 1, "y": 2}}
        return {"w": {"y": 2, "x": 1}}

    def __init__(self, w=None):
        self.first = list(w or {"x": 1})[0]

    def run(self, ep):
        answers = ep.read_new_many(1 if self.first == "x" else 3).tolist()
        return max(set(answers), key=answers.count)
'''


def _points(ev):
    return [(r["beta"], r["accuracy"], r["tokens"]) for r in ev.rows]


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_dict_knob_in_another_key_order_is_run_with_its_own(workers, tmp_path):
    """Found open and fixed: knob_key (and the sandbox's dedupe) wrote the knobs' JSON with
    sorted keys at every level, so {"w": {"x": 1, "y": 2}} and {"w": {"y": 2, "x": 1}} were
    one configuration, and β=1 was scored with β=0's episodes, though the controller reads the
    order (as a controller told 1, 1.0 and True apart before 44bdac3). The top level's order
    still does not count (knobs bind to the constructor by name)."""
    proto = EvalProtocol(draws=2)
    betas = [0.0, 1.0]
    alone = [_points(evaluate_sandboxed(ORDERED, [KSTORE], [b], proto, limits=FAST))[0]
             for b in betas]
    assert alone[0][2] < alone[1][2]  # the two orders do spend differently
    ev = evaluate_sandboxed(ORDERED, [KSTORE], betas, proto, limits=FAST, workers=workers)
    assert _points(ev) == alone
    path = tmp_path / "ordered.py"
    path.write_text(ORDERED)
    assert _points(evaluate(str(path), [KSTORE], betas, proto)) == alone


def test_knob_key_counts_nested_order_types_and_signs_but_not_the_top_levels_order():
    assert knob_key({"a": 1, "b": 2}) == knob_key({"b": 2, "a": 1})
    assert knob_key({"w": {"x": 1, "y": 2}}) != knob_key({"w": {"y": 2, "x": 1}})
    assert knob_key({"n": 0.0}) != knob_key({"n": -0.0})
    assert knob_key({"n": 1}) != knob_key({"n": 1.0}) != knob_key({"n": True})
    assert knob_key({"n": 2**53}) != knob_key({"n": 2**53 + 1})
    assert knob_key({"n": [1, 2]}) != knob_key({"n": [2, 1]})


# ---- the judge's secret start order: what a batch learns before it acts ------------------------

# With code execution: everything the batch process received before its first action, the unit
# frame (its keys, and each episode's start facts but the slot, the child's own number).
_UNIT_SEEN = '''        u = _batch.f_locals["unit"]
        seen = (sorted(u), sorted(tuple(r[1:]) for r in u["start"]), ep.pool_size, ep.delta)
        raise ValueError("<<" + repr(seen) + ">>")
'''


@pytest.mark.usefixtures("parent")
def test_nothing_a_batch_receives_before_it_acts_names_its_questions():
    """Held: the unit frame carries the β's index, its knobs, κ, the budget, the batch token and
    per episode [slot, pool size, no-answer class, Δ]: with the questions' pools of one size (as
    in the published stores, 128 each), the same for every question, so that only the slot
    (its place in the secret order) tells episodes apart. (A store whose questions have pools
    of different sizes names them by pool_size, a public fact, in-process as well.)"""
    from tests.test_redteam_session5 import _said
    from tests.test_redteam_session6 import _WHERE
    from tests.test_sandbox_boundary import _controller, _run

    ev = _run(_controller(_UNIT_SEEN, _WHERE), on_error="record")
    seen = [_said(e) for e in ev.errors]
    assert seen and len({repr(s) for s in seen}) == 1
    keys, facts, pool, delta = seen[0]
    assert keys == ["budget", "config", "k", "kappa", "r", "start", "t"]
    assert set(facts) == {(pool, 0, delta)}


# ---- the CLI's one-line usage errors -----------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["eval", "--controller", "x", "--draws", "1\n2"],  # a value with a newline: still one line
    ["eval", "--controller", "x", "--draws", "\udcff"],  # an argument that was not UTF-8
    ["\udcff"],
    [""],  # an empty command name
    ["eval", "--help", "--bogus"],  # a usage error before an eager --help
    ["data", "path", "extra"],  # an extra argument of a nested group's command
    ["eval", "--controller", "x", "--store"],  # an option without its value, last
    ["collect", "--bogus"],
    ["--bogus", "eval"],
])
def test_every_usage_error_is_one_line_and_status_2(args, capsys, monkeypatch):
    """Held: no traceback, nothing on stdout, one `error: ...` line naming where help is,
    status 2."""
    from tests.test_cli_edges import cli, one_error_line

    code, out, err = cli(args, capsys, monkeypatch)
    assert code == 2 and out == "", (code, out, err)
    line = one_error_line(err)
    assert "Traceback" not in err and "--help')" in line, line


def test_an_eager_version_ends_before_a_bad_command(capsys, monkeypatch):
    from tests.test_cli_edges import cli

    code, out, err = cli(["--version", "nosuch"], capsys, monkeypatch)
    assert (code, err) == (0, "") and out.startswith("autotts ")


@pytest.mark.usefixtures("parent")
@pytest.mark.xfail(strict=True, reason=(
    "hole (no-seccomp platforms): the kernel counts descriptors in flight in UNIX socket "
    "messages per user (user->unix_inflight), in no namespace, and refuses a send "
    "(ETOOMANYREFS) past the sender's RLIMIT_NOFILE; a socket pair that holds itself in its "
    "own queue outlives the batch until the collector of in-flight sockets runs, which only "
    "the release of a socket starts: the room a batch leaves (0 to its RLIMIT_NOFILE + 1 "
    "sends, a few bits) is read by the next batch (and, not measured, by concurrent workers' "
    "batches, which run as the same user). The class of the key quota (tests/test_redteam_session10.py). Fix: "
    "a user of each batch's own, or no socketpair() for batches (a seccomp filter of their "
    "own), or do not count a platform without seccomp as strong"))
def test_descriptors_in_flight_carry_nothing_between_batches_without_seccomp(monkeypatch):
    """With seccomp, socket() and socketpair() are refused (the seccomp cases above)."""
    from tests.test_redteam_session5 import _no_seccomp
    from tests.test_redteam_session7 import _FCNTL_COUNT, _played_more_than_one_draw
    from tests.test_sandbox_boundary import _controller, _run

    _no_seccomp(monkeypatch)
    _played_more_than_one_draw(_run(_controller(_FCNTL_COUNT, _socket_source("unix-inflight")),
                                    on_error="record"))


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", ["pipe-mode", "pipe-times", "ofd-lock"])
@pytest.mark.parametrize("nobody", [True, False], ids=["nobody", "no-nobody"])
def test_the_shared_pipes_inode_carries_nothing_between_batches_without_seccomp(
        how, nobody, monkeypatch):
    """Found open and fixed (where the sandbox's user owns the pipes: no-nobody here, an
    ordinary user anywhere): a batch set the stdin pipe's mode bits or its times, and the next
    batch read them with fstat. The sandbox process now puts its shared pipes' group, mode and
    times back after each batch (child._restore_inherited). As nobody, who owns no pipe of the
    evaluating process, both are refused."""
    from autotts.sandbox.lockdown import is_strong, probe
    from tests.test_redteam_session5 import _no_seccomp
    from tests.test_redteam_session7 import _FCNTL_COUNT, _played_more_than_one_draw
    from tests.test_sandbox_boundary import _controller, _run

    _no_seccomp(monkeypatch)
    if not nobody:
        if os.geteuid() != 0 or not is_strong(probe(["seccomp", "nobody"])):
            pytest.skip("not root, or not a strong sandbox without seccomp and nobody")
        monkeypatch.setenv("AUTOTTS_SANDBOX_DISABLE", "seccomp,nobody")
    _played_more_than_one_draw(_run(_controller(_FCNTL_COUNT, _socket_source(how)),
                                    on_error="record"))


# ---- the lead's last attack: bytes of the judge's stream left in the pipe ---------------------

# With code execution the batch takes over its own reading of the judge's frames: once all its
# episodes have ended it reads the judge's next reply but the last byte of its header, tells
# itself the batch is over, and exits. The byte stays in the shared stdin pipe, where the
# zygote reads the next unit frame: every later frame is misread. Could a misread frame be a
# `unit` of the batch's making (a message to the next batch)? Its length would have to come
# from the judge's bytes (JSON text holds no NUL byte, an 8-byte length of a frame does), and
# its header from int64 counters and indices no controller can make spell JSON: so the run must
# end (a crash or a timeout verdict), with no process having played more than one draw.
_LEAVE_A_BYTE = '''
import builtins, sys
import numpy as np

_child = sys.modules["autotts.sandbox.child"]
_run_unit = _child.Scheduler.run_unit


def _read_exact(f, n):
    out = b""
    while len(out) < n:
        part = f.read(n - len(out))
        if not part:
            break
        out += part
    return out


def _run_unit_leaving_a_byte(self, unit, read):
    def lazy():
        if self.live:
            return read()
        raw = sys.stdin.buffer.raw
        n = int.from_bytes(_read_exact(raw, 8), "little")
        _read_exact(raw, n - 1)
        empty = [np.zeros((0, 5), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                 np.zeros(0, np.int32), np.zeros(0, bool)]
        return {"t": "reply", "end": True, "start": [], "x": []}, empty
    return _run_unit(self, unit, lazy)


_child.Scheduler.run_unit = _run_unit_leaving_a_byte
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "no-seccomp"])
def test_a_batch_that_leaves_the_judges_bytes_in_the_pipe_ends_the_run(seccomp, monkeypatch):
    from tests.test_redteam_session5 import SHORT, _holds, _no_seccomp
    from tests.test_redteam_session10 import _COUNT_BODY
    from tests.test_sandbox_boundary import _controller, _run

    if not seccomp:
        _no_seccomp(monkeypatch)
    kind = _holds(lambda: _run(_controller(_COUNT_BODY, _LEAVE_A_BYTE), on_error="record",
                               limits=SHORT))
    assert kind in ("crash", "timeout")  # the stream is misread from the next frame on
