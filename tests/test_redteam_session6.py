"""Red team, session 6: the design of 9069f1f (a batch's round is judged only once /proc shows
its process gone; the sandbox forks nothing before the judge's "go"; the scan follows the
leader's descendants), attacked as a candidate with code execution in its own batch process.

The invariant: what a batch process learns (one draw of each question, one β) never reaches
another batch. A process that stays alive is one way; these tests look for the others: state
that outlives the process (memory shared with the sandbox process, flags of the descriptors it
shares, kernel objects of the sandbox's namespaces), frames written before the process exits
and read after the check, and forged frames in each state. Holes are strict xfails naming the
fix they need; the rest assert that the sandbox holds. Helpers come from session 5.

Holes found (strict xfails): the hint word's page (bytes 8..4095 of the shared memfd page);
fcntl flags of the shared descriptors; the exit time on the shared clock (1 bit a batch here);
without seccomp, System V IPC in the sandbox's one IPC namespace, the sandbox process's nice
value and soft rlimits (prlimit); where a batch can fork (root, no seccomp, no nobody), an
orphan that keeps changing pid slips through the /proc scan, and so does session 5's thread of
a zombie leader; frames a batch wrote before its
exit, judged as the next batch's after the check (with a forged hint, or without one); a
config_error frame (forged, or a plain candidate missing a knob) raised as the user's
ConfigError, which ends a discovery run. Held: every frame of another state after unit_done,
forged verdicts (they only fail the candidate), SIGINT to the sandbox process, an orphan that
stays, honest stdlib idioms (same numbers).

Closed since (session 11): System V IPC, where each batch without seccomp has an IPC namespace
of its own (also after a setns back into the sandbox's, refused), and the orphan that hops
pids, where the sandbox process, its PID namespace's init, ends every other process of it
after each batch."""

from __future__ import annotations

import pytest

from autotts.evaluate import evaluate
from autotts.sandbox import SandboxError, evaluate_sandboxed
from autotts.sandbox import supervisor as supervisor_module
from tests.test_redteam_session5 import _COUNT, SHORT, _counts, _holds, _no_seccomp
from tests.test_sandbox import FAST, parent  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import PROTO, STORE, _controller, _run

Q = len(STORE.questions)  # questions of the store: what one batch (one draw) plays
BATCHES = PROTO.draws  # one β: one batch per draw

# Module-level code runs in the knobs process and in each batch process, below `_unit_child`
# (batches) or `_configs_child` (knobs): their frames hold the unit, the output and the hint.
_WHERE = '''
import builtins
import ctypes

import autotts.sandbox.child as sandbox_child
from autotts.sandbox.wire import pack_frame, read_frame

_libc = ctypes.CDLL(None)
_send = sandbox_child._Out.send


def _rows(header):
    """The arrays of a forged round of JSON messages (wire.py: one OP_JSON row per message,
    no branch lists), so that a round that got past the judge's token and state checks would
    be judged, not refused for its form; none for a frame of another kind."""
    import numpy as np

    if header.get("t") != "round":
        return ()
    return [np.array([[m[0], 0, 0, 0, 0] for m in header["m"]], np.int64).reshape(-1, 5),
            np.zeros(0, np.int32), np.zeros(0, bool)]


def _where(name):
    f = sys._getframe(0)
    while f is not None and f.f_code.co_name != name:
        f = f.f_back
    return f


_batch = _where("_unit_child")
'''


def _played_more_than_one_draw(ev) -> None:
    counts = _counts(ev)
    assert len(counts) == BATCHES * Q
    assert max(counts) == Q, f"episodes counted across batches: {counts}"


# ---- state that outlives a batch's process -----------------------------------------------------

# The hint word is an 8-byte memfd mapped MAP_SHARED by the judge, the sandbox process and (by
# fork) every batch. A mapping is whole pages: the rest of the word's page is the same shared
# page cache page in every process, and the sandbox process resets only the word.
_HINT_PAGE = _WHERE + '''

def _hint():
    f = sys._getframe(0)
    while f is not None:
        h = f.f_locals.get("hint")
        if isinstance(h, np.ndarray):
            return h
        f = f.f_back
    raise RuntimeError("no hint word")


_CELL = ctypes.c_int64.from_address(_hint().ctypes.data + 64)  # past the word, same page
'''

_HINT_COUNT = '''        _CELL.value += 1
        raise ValueError(f"episode {_CELL.value} of this process")
'''


@pytest.mark.usefixtures("parent")
def test_the_hint_page_carries_nothing_between_batches():
    """A counter kept in the hint word's page, past the word: each batch must start from what
    the sandbox process had before any candidate code ran."""
    ev = _run(_controller(_HINT_COUNT, _HINT_PAGE), on_error="record")
    _played_more_than_one_draw(ev)


# Batches share their open file descriptions (stdin, stdout, stderr, the result pipe) with the
# sandbox process, which hands them to the next batch. fcntl(F_SETFL) is allowed (Python uses
# it), and its flags are the description's, not the process's.
_FLAGS = _WHERE + '''
# 9 bits: O_APPEND, O_ASYNC and O_DIRECT on stdin, stdout and stderr (none of them changes what
# the sandbox process reads or writes there)
_BITS = [(fd, flag) for fd in (0, 1, 2) for flag in (os.O_APPEND, 0o20000, 0o40000)]


def _get():
    return sum(1 << i for i, (fd, flag) in enumerate(_BITS) if _libc.fcntl(fd, 3) & flag)


def _put(n):
    for i, (fd, flag) in enumerate(_BITS):
        fl = _libc.fcntl(fd, 3)
        _libc.fcntl(fd, 4, fl | flag if n >> i & 1 else fl & ~flag)
'''

_FLAGS_COUNT = '''        n = _get() + 1
        _put(n)
        raise ValueError(f"episode {n} of this process")
'''


@pytest.mark.usefixtures("parent")
def test_descriptor_flags_carry_nothing_between_batches():
    ev = _run(_controller(_FLAGS_COUNT, _FLAGS), on_error="record")
    _played_more_than_one_draw(ev)


# Without seccomp (a platform without libseccomp, strong by namespaces, an empty root and
# Landlock), the batch has the syscalls that make kernel objects: the IPC namespace is the
# sandbox's, shared by all its batches, so a System V segment outlives the batch that made it.
_SYSV = _WHERE + '''
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_id = _libc.shmget(0x5EED, 4096, 0o1000 | 0o600)  # IPC_CREAT
_addr = _libc.shmat(_id, None, 0) if _id >= 0 else None
_CELL = ctypes.c_int64.from_address(_addr) if _addr not in (None, 2**64 - 1) else ctypes.c_int64()
'''

# The same, after the batch tried to go back into the sandbox process's user and IPC namespaces
# (each batch has its own now): setns through a pidfd of its parent.
_SYSV_SETNS = _WHERE + '''
_pidfd = _libc.syscall(434, os.getppid(), 0)  # pidfd_open: the same number everywhere
for _ns in (0x10000000, 0x08000000):  # CLONE_NEWUSER, CLONE_NEWIPC
    _libc.setns(_pidfd, _ns)
''' + _SYSV[len(_WHERE):]

# The sandbox process's nice value, which each batch inherits: a batch may raise it (a process
# of the same user), never lower it, so it counts up to 19.
_NICE = _WHERE

_NICE_COUNT = '''        n = os.getpriority(os.PRIO_PROCESS, 0) + 1
        try:
            os.setpriority(os.PRIO_PROCESS, os.getppid(), n)  # the sandbox process
            os.setpriority(os.PRIO_PROCESS, 0, n)
        except OSError:
            pass
        raise ValueError(f"episode {n} of this process")
'''

# The sandbox process's soft resource limits, which each batch inherits: prlimit() on a process
# of the same user may set any soft limit up to the hard one (a 63-bit register).
_PRLIMIT = _WHERE + '''
import resource
'''

_PRLIMIT_COUNT = '''        soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
        n = hard - soft + 1  # the count is how far the soft limit is below the hard one
        try:
            for pid in (os.getppid(), 0):  # the sandbox process, then this one
                resource.prlimit(pid, resource.RLIMIT_MSGQUEUE, (hard - n, hard))
        except (OSError, ValueError):
            pass
        raise ValueError(f"episode {n} of this process")
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", [
    "prlimit",  # the sandbox process restores its rlimits after each batch
    # Once a hole (strict xfail): each batch has an IPC namespace of its own now
    "sysv-shm",
    "sysv-shm-setns",
])
def test_kernel_objects_carry_nothing_between_batches_without_seccomp(how, monkeypatch):
    _no_seccomp(monkeypatch)
    extra, body = {"sysv-shm": (_SYSV, _HINT_COUNT), "sysv-shm-setns": (_SYSV_SETNS, _HINT_COUNT),
                   "prlimit": (_PRLIMIT, _PRLIMIT_COUNT)}[how]
    ev = _run(_controller(body, extra), on_error="record")
    _played_more_than_one_draw(ev)



@pytest.mark.usefixtures("parent")
def test_a_raised_nice_value_ends_the_run_without_seccomp(monkeypatch):
    """A batch raises the sandbox process's nice value (a counter up to 19 for the next batch;
    once a strict xfail). The sandbox process, which dropped the privilege to lower it again,
    cannot put it back: the run ends with a crash verdict before another batch starts."""
    _no_seccomp(monkeypatch)
    with pytest.raises(SandboxError) as e:
        _run(_controller(_NICE_COUNT, _NICE), on_error="record")
    assert e.value.verdict.kind == "crash"
    assert "nice value" in e.value.verdict.message

# ---- the clock: when a process exits is a message to the next one ----------------------------

# Each process says one bit by the phase of the monotonic clock at which it exits (period 3 s):
# 0 from the knobs process, 1 from a batch. The next batch reads the phase when it starts,
# which is the last exit's phase plus the check, the frame and the fork (well under 1.4 s).
_CLOCK = _WHERE + '''
import time

_PERIOD = 3.0
_AFTER_A_BATCH = time.monotonic() % _PERIOD >= _PERIOD / 2


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") in ("configs", "unit_done"):
        target = 0.1 if header.get("t") == "configs" else _PERIOD / 2 + 0.1
        time.sleep((target - time.monotonic()) % _PERIOD)
        os._exit(0)


sandbox_child._Out.send = send
'''

_CLOCK_COUNT = f'''        n = getattr(builtins, "seen", {Q} if _AFTER_A_BATCH else 0) + 1
        builtins.seen = n
        raise ValueError(f"episode {{n}} of this process")
'''


@pytest.mark.xfail(strict=True, reason=(
    "hole (a covert timing channel, low rate): a process's exit time, read on the shared "
    "monotonic clock by the next batch at its start, carries about log2(episode_seconds / "
    "jitter) bits per batch (1 bit with 3 s here). Fix: batches without a clock (vDSO and "
    "clock syscalls are not filterable by seccomp alone: a per-batch time namespace with a "
    "random CLOCK_MONOTONIC/BOOTTIME offset, and CLOCK_REALTIME coarsened or refused), or the "
    "judge starts each batch after a random delay; else document it under 'What is not "
    "protected' with its capacity"))
@pytest.mark.usefixtures("parent")
def test_exit_times_carry_nothing_between_batches():
    ev = _run(_controller(_CLOCK_COUNT, _CLOCK), on_error="record")
    _played_more_than_one_draw(ev)


# ---- frames written before the exit, judged after the check ---------------------------------

# Each batch process that played its batch forges the next batch's round, ending every episode
# of it with what it remembers (here: its episode count), and exits at once. A batch process
# that finds its batch already played (the judge's last reply waits on its stdin, behind the
# unit frame) only reports that it is done.
_PAST = _WHERE + '''
if _batch is not None:
    _fd = sys.stdin.buffer.raw.fileno()
    _fl = _libc.fcntl(_fd, 3)  # F_GETFL (os.set_blocking is an ioctl: refused)
    _libc.fcntl(_fd, 4, _fl | os.O_NONBLOCK)
    try:
        _reply = read_frame(sys.stdin.buffer.raw)[0]
    except EOFError:
        _reply = None
    finally:
        _libc.fcntl(_fd, 4, _fl)
    if _reply is not None and _reply.get("end"):
        _batch.f_locals["out"].send({"t": "unit_done", "stdout": "", "dropped": 0})
        os._exit(0)


def send(self, header, arrays=()):
    if header.get("t") != "unit_done" or _batch is None:
        return _send(self, header, arrays)
    n = builtins.seen
    # the next batch's slots are this one's (one draw of the same questions)
    msgs = [[s[0], "error", ["exception", f"ValueError: episode {n + k + 1} of this process",
                             None]] for k, s in enumerate(_batch.f_locals["unit"]["start"])]
    {how}
    os._exit(0)


sandbox_child._Out.send = send
'''

_PAST_HOW = {
    # unit_done, a forged "reaped" and the round in one write: the supervisor handles the
    # hint (waiting until this process is gone) before it reaches the round in the same read
    "forged-hint": 'os.write(self.fd, pack_frame(header) + pack_frame({"t": "reaped"})\n'
                   '             + pack_frame(_r := {"t": "round", "m": msgs}, _rows(_r)))',
    # no hint: stay until the supervisor has started its own wait (PENDING_HINT_SECONDS,
    # narrowed to 0.05 s here), then write the round and exit while it waits
    "no-hint": '_send(self, header)\n'
               '    import time\n'
               '    time.sleep(1.5)\n'
               '    os.write(self.fd, pack_frame(_r := {"t": "round", "m": msgs}, _rows(_r)))',
}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", sorted(_PAST_HOW))
def test_frames_written_before_the_exit_are_not_judged_for_the_next_batch(how, monkeypatch):
    monkeypatch.setattr(supervisor_module, "PENDING_HINT_SECONDS", 0.05)
    _holds(lambda: _run(_controller(_COUNT, _PAST.replace("{how}", _PAST_HOW[how])),
                        on_error="record", limits=SHORT))


# ---- forged frames after a batch's end ------------------------------------------------------

_AFTER = _WHERE + '''

def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") == "unit_done" and _batch is not None:
        _send(self, {frame!r}, _rows({frame!r}))
        {then}
'''

_FRAMES = {
    "ready": {"t": "ready", "isolation": {"seccomp": True}},
    "go": {"t": "go"},
    "configs": {"t": "configs", "name": "x", "configs": [{}]},
    "config_error": {"t": "config_error", "message": "bad"},
    "unit_done": {"t": "unit_done", "stdout": "", "dropped": 0},
    "round": {"t": "round", "m": [[0, "answer", [None]]]},
    "done": {"t": "done"},
    "stop": {"t": "stop"},
}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("then", ["os._exit(0)", "time.sleep(30)"], ids=["exits", "stays"])
@pytest.mark.parametrize("frame", sorted(_FRAMES))
def test_frames_out_of_state_after_a_batch_end_the_run(frame, then):
    """Every frame of another state, sent after unit_done (then the process exits or stays):
    a protocol error (crash), nothing judged for the next batch."""
    extra = "import time\n" + _AFTER.format(frame=_FRAMES[frame], then=then) + \
        "\nsandbox_child._Out.send = send\n"
    with pytest.raises(SandboxError) as info:
        _run(_controller("        return ep.read_new()\n", extra), limits=SHORT)
    v = info.value.verdict
    assert v.kind == "crash" and "wire protocol" in v.message, str(v)


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("frame", [
    {"t": "verdict", "verdict": {"kind": "timeout", "message": "forged"}},
    {"t": "died", "status": 0},
])
def test_a_forged_verdict_after_a_batch_only_fails_the_candidate(frame):
    """A verdict or death forged in the reaping state ends the run with that failure: it can
    only hurt the candidate (no result is kept)."""
    extra = _AFTER.format(frame=frame, then="time.sleep(30)") + "\nsandbox_child._Out.send = send\n"
    with pytest.raises(SandboxError) as info:
        _run(_controller("        return ep.read_new()\n", "import time\n" + extra),
             limits=SHORT)
    assert info.value.verdict.kind in ("timeout", "crash")


# ---- the sandbox process made to exit under a live batch ------------------------------------

_INTERRUPT = _WHERE + '''
import signal
import time


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") != "unit_done" or _batch is None:
        return
    loc = _batch.f_locals
    stdin = sys.stdin.buffer.raw
    # Python's SIGINT handler is the one a namespace's PID 1 accepts from inside: the sandbox
    # process raises KeyboardInterrupt out of its waitpid and exits; this one plays on.
    try:
        os.kill(os.getppid(), signal.SIGINT)
    except OSError:
        pass
    time.sleep(0.2)
    for _ in range(len(loc["req"]["betas"]) * loc["req"]["proto"]["draws"] - 1):
        unit, _ = read_frame(stdin)
        sched = sandbox_child.Scheduler(loc["cls"], unit["config"], loc["req"], self,
                                        loc["hint"])
        sched.run_unit(unit, lambda: read_frame(stdin))
        _send(self, {"t": "unit_done", "stdout": "", "dropped": 0})
    os._exit(0)


sandbox_child._Out.send = send
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "no-seccomp"])
def test_a_batch_cannot_make_the_sandbox_process_exit_under_it(seccomp, monkeypatch):
    """The batch interrupts the sandbox process (SIGINT, where no filter refuses kill) so that
    it leaves its waitpid, and reads the next batches' frames itself. The sandbox process's exit
    (PID 1 of its namespace) takes the batch with it; the run fails."""
    if not seccomp:
        _no_seccomp(monkeypatch)
    kind = _holds(lambda: _run(_controller(_COUNT, _INTERRUPT), on_error="record",
                               limits=SHORT))
    # with seccomp the kill is refused and the batch waits for a frame that never comes;
    # without, the sandbox process reports KeyboardInterrupt as a crash and its exit (PID 1 of
    # the namespace) ends the batch
    assert kind == ("timeout" if seccomp else "crash")


# ---- orphans: a batch that can fork (root, no seccomp, no drop to nobody) -------------------

# The batch forks a child that leaves the process group, and exits; the orphan (re-parented to
# the namespace's PID 1, the sandbox process) either stays where it is, or keeps moving to a new
# pid (fork, parent exits) until the next batch says it runs (through the hint word): then
# the judge's check has passed, and it plays the next batch with this batch's memory while that
# batch's own process waits.
_ORPHAN = _WHERE + '''
import time


def _find_hint():
    f = sys._getframe(0)
    while f is not None:
        h = f.f_locals.get("hint")
        if isinstance(h, np.ndarray):
            return h
        f = f.f_back
    return np.zeros(1, np.int64)


HINT = _find_hint()
HERE, DONE = 12345, 54321

if _batch is not None:
    # Am I to be played by my predecessor's survivor? Say that I run, and wait a moment.
    HINT[0] = HERE
    _t = time.monotonic()
    while time.monotonic() - _t < 1.0 and HINT[0] != DONE:
        time.sleep(0.001)
    if HINT[0] == DONE:
        _batch.f_locals["out"].send({"t": "unit_done", "stdout": "", "dropped": 0})
        os._exit(0)
    HINT[0] = -1


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") != "unit_done" or _batch is None:
        return
    loc = _batch.f_locals
    stdin = sys.stdin.buffer.raw
    try:
        if os.fork():
            os._exit(0)
    except OSError:
        raise ValueError("<<fork refused>>") from None
    os.setsid()  # out of the sandbox's process group
    deadline = time.monotonic() + 10
    while HINT[0] != HERE:  # until the next batch runs
        if time.monotonic() > deadline:
            os._exit(0)
        if {hop} and os.fork():
            os._exit(0)
    sched = sandbox_child.Scheduler(loc["cls"], loc["unit"]["config"], loc["req"], self,
                                    np.zeros(1, np.int64))
    sched.run_unit(loc["unit"], lambda: read_frame(stdin))
    HINT[0] = DONE
    os._exit(0)


sandbox_child._Out.send = send
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("hop", [
    False,
    # Once a hole (strict xfail): the zygote, its PID namespace's init, now ends every other
    # process of the namespace after each batch where a batch can fork
    True,
], ids=["stays", "hops"])
def test_an_orphan_of_a_batch_never_plays_the_next_batch(hop, monkeypatch):
    from autotts.sandbox.lockdown import is_strong, probe

    if not is_strong(probe(["seccomp", "nobody"])):
        pytest.skip("without seccomp this platform is not a strong sandbox")
    monkeypatch.setenv("AUTOTTS_SANDBOX_DISABLE", "seccomp,nobody")
    try:
        ev = _run(_controller(_COUNT, _ORPHAN.replace("{hop}", str(hop))), on_error="record",
                  limits=SHORT)
    except SandboxError as e:
        if "fork refused" in str(e.verdict):
            pytest.skip("a batch cannot fork on this platform (not root)")
        assert e.verdict.kind == "timeout", str(e.verdict)
        assert "did not exit" in e.verdict.message
        return
    _played_more_than_one_draw(ev)


# Once a hole (strict xfail): the batch starts a thread and ends its main thread alone
# (SYS_exit); /proc shows the process as a zombie, and the scan skipped zombies. A zombie whose
# num_threads counts live threads is alive to the scan now: the next batch waits for it.
@pytest.mark.usefixtures("parent")
def test_a_thread_of_a_zombie_leader_never_plays_the_next_batch_as_root(monkeypatch):
    import os

    from autotts.sandbox.lockdown import is_strong, probe
    from tests.test_redteam_session5 import _FIND, _ORPHAN_THREAD

    if os.geteuid() != 0:
        pytest.skip("not root: RLIMIT_NPROC keeps a batch from starting a thread")
    if not is_strong(probe(["seccomp", "nobody"])):
        pytest.skip("without seccomp this platform is not a strong sandbox")
    monkeypatch.setenv("AUTOTTS_SANDBOX_DISABLE", "seccomp,nobody")
    _holds(lambda: _run(_controller(_COUNT, _FIND + _ORPHAN_THREAD), on_error="record",
                        limits=SHORT))


# ---- a configuration error forged by candidate code -----------------------------------------

_CONFIG_ERROR = _WHERE + '''
if _where("_configs_child") is not None:
    _where("_forked").f_locals["out"].send({"t": "config_error", "message": "forged"})
    os._exit(0)
'''


@pytest.mark.usefixtures("parent")
def test_a_forged_config_error_is_the_candidates_failure():
    with pytest.raises(SandboxError):
        _run(_controller("        return ep.read_new()\n", _CONFIG_ERROR))


@pytest.mark.usefixtures("parent")
def test_a_forged_config_error_fails_only_the_candidate_in_discovery():
    from autotts.discover.candidates import CandidateFailure, SandboxBackend

    be = SandboxBackend(dict(FAST.__dict__))
    be.sb = _Unrestricted(be.sb)
    src = _controller("        return ep.read_new()\n", _CONFIG_ERROR)
    with pytest.raises(CandidateFailure):
        be.evaluate(src, [STORE], [0.5], PROTO, stage="smoke")


_NEEDY = '''
class Needy:
    NAME = "needy"

    def __init__(self, n):
        self.n = n

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return ep.read_new()
'''


@pytest.mark.usefixtures("parent")
def test_a_candidate_missing_a_knob_fails_as_a_candidate_in_discovery(tmp_path):
    """No code execution needed: an LLM's ordinary mistake must cost that candidate only."""
    from autotts.discover.candidates import CandidateFailure, SandboxBackend

    path = tmp_path / "needy.py"
    path.write_text(_NEEDY)
    with pytest.raises(CandidateFailure):
        SandboxBackend(dict(FAST.__dict__)).evaluate(str(path), [STORE], [0.5], PROTO,
                                                     stage="smoke")


class _Unrestricted:
    """The sandbox module, with candidates run as if they had code execution already."""

    def __init__(self, sb) -> None:
        self.sb = sb

    def __getattr__(self, name):
        return getattr(self.sb, name)

    def evaluate_sandboxed(self, *a, **kw):
        return self.sb.evaluate_sandboxed(*a, filename="hostile.py", _unrestricted=True, **kw)


# ---- honest candidates: the same numbers in the sandbox -------------------------------------

_IDIOMS = '''
import bisect
import heapq
import itertools
import math
import statistics
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from functools import reduce
from typing import Optional


@dataclass
class Tally:
    votes: Counter = field(default_factory=Counter)
    lengths: list = field(default_factory=list)


class Idioms:
    NAME = "idioms"

    def __init__(self, n: int = 6, k: int = 2):
        self.n = n
        self.k = k

    @staticmethod
    def schedule(beta):
        return {{"n": max(2, int(round(4 + 8 * beta))), "k": 2}}

    def run(self, ep) -> Optional[int]:
        t = Tally()
        seen = deque(maxlen=3)
        by_answer = defaultdict(list)
        for a in ep.read_new_many(self.n):
            a = int(a)
            t.votes[a] += 1
            bisect.insort(t.lengths, ep.generated_tokens)
            seen.append(a)
            by_answer[a].append(len(t.lengths))
        if not t.votes:
            return None
        {vote}
'''

_IDIOM_VOTES = {
    "most_common": "return t.votes.most_common(1)[0][0]",
    "nlargest": "return heapq.nlargest(1, t.votes.items(), key=lambda kv: (kv[1], -kv[0]))[0][0]",
    "statistics": "return int(statistics.mode(list(t.votes.elements())))"
                  " if statistics.median(t.lengths) >= 0 else None",
    "reduce": "return reduce(lambda a, b: a if t.votes[a] >= t.votes[b] else b, "
              "sorted(t.votes))",
    "groupby": "runs = [(k, len(list(g))) for k, g in itertools.groupby(sorted(t.votes.elements()))]\n"
               "        return max(runs, key=lambda r: (r[1], -r[0]))[0] + 0 * math.floor(1.5)",
}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("vote", sorted(_IDIOM_VOTES))
def test_honest_idioms_give_the_in_process_numbers(vote, tmp_path):
    """Plain (admitted, restricted) controllers written with Counter, heapq, bisect,
    statistics, functools, itertools, dataclasses and typing: the sandbox gives exactly the
    rows and episodes in-process evaluation gives, at two β."""
    path = tmp_path / "idioms.py"
    path.write_text(_IDIOMS.format(vote=_IDIOM_VOTES[vote]))
    ref = evaluate(str(path), [STORE], [0.25, 0.75], PROTO, on_error="record", episodes=True)
    assert not ref.errors and all(r["accuracy"] > 0 for r in ref.rows)
    ev = evaluate_sandboxed(str(path), [STORE], [0.25, 0.75], PROTO, limits=FAST,
                            on_error="record", episodes=True)
    assert ev.errors == ref.errors
    assert ev.rows == ref.rows and ev.episodes == ref.episodes
