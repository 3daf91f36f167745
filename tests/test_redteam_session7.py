"""Red team, session 7: the fixes of 0668911 (a per-batch token in every round and unit_done;
the result pipe drained at the exit check; the hint page zeroed whole and the shared
descriptors' status flags restored after each batch), attacked as a candidate with code
execution in its own batch process.

The invariant (docs/sandbox.md): what a batch process learns (one draw of each question, one β)
never reaches another batch. These tests look for state shared with the sandbox process (the
zygote) that it does not reset, with and without the seccomp filter, and check that an honest
candidate whose frames are larger than the result pipe is not taken for a hostile one.

Found and fixed: the hint memfd stayed open in the zygote (CPython's mmap keeps a duplicate of
the descriptor it maps) and every batch inherited it, with seccomp on: its file offset (lseek)
was a 64-bit register shared by every batch, and its atime (set by pread at a chosen time, read
by fstat) another (the hint is now mapped with libc's mmap, and the zygote closes every
descriptor but its pipes before it forks). Holes left (strict xfails), without seccomp: F_SETPIPE_SZ and F_SETSIG on the shared
pipes (neither is a status flag, so the restore leaves them), prlimit on the zygote. On kernels
that keep anonymous pipes' times (before about 6.8), the stderr pipe's mtime (conditional
xfail). Held: the same fcntl/prlimit marks with seccomp on; stale round frames carrying the
writer's own token (drained before the next unit, or read after a forged hint); large honest
output (a unit_done frame bigger than the result pipe, read in pieces before the exit check)."""

from __future__ import annotations

import pytest

from autotts.evaluate import evaluate
from autotts.sandbox import SandboxError, SandboxLimits, evaluate_sandboxed
from autotts.sandbox import supervisor as supervisor_module
from tests.test_redteam_session5 import _COUNT, SHORT, _counts, _no_seccomp
from tests.test_redteam_session6 import _PAST, _PAST_HOW, _WHERE
from tests.test_sandbox import FAST, parent  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import PROTO, STORE, _controller, _run

Q = len(STORE.questions)  # questions of the store: what one batch (one draw) plays
BATCHES = PROTO.draws  # one β: one batch per draw


def _played_more_than_one_draw(ev) -> None:
    counts = _counts(ev)
    assert len(counts) == BATCHES * Q
    assert max(counts) == Q, f"episodes counted across batches: {counts}"


# ---- descriptors the zygote shares with every batch, beyond 0, 1, 2 and the result pipe -------

# A batch's descriptors (fstat works where the root is empty): stdin, stdout, stderr, the result
# pipe, fillers up to RLIMIT_NOFILE, and one regular file of one page: the hint memfd, which
# CPython's mmap.mmap() duplicated when the zygote mapped it (its own descriptor is closed, the
# duplicate is not). Its file offset belongs to the open file description, which the zygote and
# every batch share; lseek is on the seccomp allow-list.
_MEMFD = _WHERE + '''
import stat


def _memfd():
    for fd in range(64):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
        except OSError:
            pass
    return None


_FD = _memfd()
'''

_OFFSET_COUNT = '''        if _FD is None:
            raise ValueError("episode 1 of this process (no shared regular file)")
        n = os.lseek(_FD, 0, os.SEEK_CUR) + 1
        os.lseek(_FD, n, os.SEEK_SET)
        raise ValueError(f"episode {n} of this process")
'''


# Its access time, too: a read() of the memfd sets it (the internal shmem mount has strict
# atime), and nothing else reads it (the hint is read through the mapping): a timestamp whose
# low bits the last batch chose by choosing when to read.
_ATIME = _MEMFD + '''
import builtins
import time

_SLOT, _SLOTS = 20_000_000, 32


def _said():
    return os.fstat(_FD).st_atime_ns // _SLOT % _SLOTS


def _say(n):
    # read inside slot n's cycle, past the middle of the slot (the inode's clock is coarse: up
    # to a tick behind time.time_ns())
    while True:
        t = time.time_ns()
        if t // _SLOT % _SLOTS == n % _SLOTS and _SLOT // 2 <= t % _SLOT < _SLOT * 3 // 4:
            os.pread(_FD, 1, 0)
            return
        time.sleep(0.001)


if _FD is not None and _where("_configs_child") is not None:
    _say(0)
if _FD is not None and _batch is not None:
    builtins.seen = _said()


def send(self, header, arrays=()):
    if header.get("t") == "unit_done" and _batch is not None and _FD is not None:
        _say(builtins.seen)
    _send(self, header, arrays)


sandbox_child._Out.send = send
'''

_HINT_FD = {"offset": (_OFFSET_COUNT, _MEMFD), "atime": (_COUNT, _ATIME)}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", sorted(_HINT_FD))
def test_the_hint_descriptor_carries_nothing_between_batches(how):
    body, extra = _HINT_FD[how]
    ev = _run(_controller(body, extra), on_error="record")
    counts = _counts(ev)
    assert len(counts) == BATCHES * Q
    # No descriptor of the hint is left to a batch (the counter cannot even count within one).
    assert max(counts) <= Q, f"episodes counted across batches: {counts}"


# ---- state of the zygote that is not a status flag (no seccomp: every fcntl is allowed) -------

# The pipe's size (F_SETPIPE_SZ) belongs to the pipe, and the owner signal (F_SETSIG) to the
# open file description: both outlive the batch, and neither is what F_GETFL/F_SETFL restore.
# One bit is enough to break the invariant: a batch marks the state during its episodes, and
# the next one, reading it when it starts, counts on from the last batch's episodes.
_FCNTL = _WHERE + '''
import builtins
import contextlib
import resource

_libc.fcntl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
F_SETSIG, F_GETSIG, F_SETPIPE_SZ, F_GETPIPE_SZ = 10, 11, 1031, 1032
_MARKS = {
    "F_SETSIG": (lambda: _libc.fcntl(0, F_GETSIG, 0) == 29,
                 lambda: _libc.fcntl(0, F_SETSIG, 29)),
    # stdout's pipe: 64 KiB by default, marked as one page
    "F_SETPIPE_SZ": (lambda: _libc.fcntl(1, F_GETPIPE_SZ, 0) == 4096,
                     lambda: _libc.fcntl(1, F_SETPIPE_SZ, 4096)),
    # the sandbox process's soft RLIMIT_MSGQUEUE, which each batch inherits
    "prlimit": (lambda: resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0] == 12345,
                lambda: _prlimit_parent(12345)),
}


def _prlimit_parent(soft):
    hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1]
    with contextlib.suppress(OSError, ValueError):
        resource.prlimit(os.getppid(), resource.RLIMIT_MSGQUEUE, (soft, hard))

_seen, _mark = _MARKS["{how}"]
_AFTER_A_BATCH = bool(_seen())
'''

_FCNTL_COUNT = f'''        _mark()
        n = getattr(builtins, "seen", {Q} if _AFTER_A_BATCH else 0) + 1
        builtins.seen = n
        raise ValueError(f"episode {{n}} of this process")
'''


def _no_seccomp_hole(what: str, fix: str):
    return pytest.mark.xfail(strict=True, reason=(
        f"hole (no-seccomp platforms): {what} outlives the batch and the zygote does not reset "
        f"it (it restores F_SETFL flags only); the next batch reads it when it starts. Fix: "
        f"{fix}; or, where seal() has no seccomp filter, do not count the platform as strong "
        f"for candidate code"))


@pytest.mark.usefixtures("parent")
# Once holes (strict xfails): the sandbox process now puts each of these registers back after
# every batch where no filter refuses them (child._restore_inherited).
@pytest.mark.parametrize("how", ["F_SETSIG", "F_SETPIPE_SZ", "prlimit"])
def test_descriptor_state_beyond_the_status_flags_carries_nothing_without_seccomp(
        how, monkeypatch):
    _no_seccomp(monkeypatch)
    ev = _run(_controller(_FCNTL_COUNT, _FCNTL.replace("{how}", how)), on_error="record")
    _played_more_than_one_draw(ev)


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", ["F_SETSIG", "F_SETPIPE_SZ", "prlimit"])
def test_descriptor_state_beyond_the_status_flags_is_refused_with_seccomp(how):
    """The same attacks with the filter: fcntl is allowed for F_DUPFD/GETFD/SETFD/GETFL/SETFL/
    DUPFD_CLOEXEC only, prlimit64 only on this process and only to read: no mark is set."""
    ev = _run(_controller(_FCNTL_COUNT, _FCNTL.replace("{how}", how)), on_error="record")
    _played_more_than_one_draw(ev)


# ---- timestamps of the shared pipes ----------------------------------------------------------

# A write to a pipe sets the pipe inode's mtime (the current coarse wall-clock time); fstat() and
# write() are on the seccomp allow-list. stderr's pipe is written by nothing else (the
# supervisor reads it: that sets atime), so its mtime is the time of the last batch's last write
# to it: a timestamp whose low bits the batch chose by choosing when to write. Here 5 bits (a
# 20 ms slot in a 640 ms cycle); the capacity is log2(wait / clock tick) bits per batch, stored,
# not measured on the way (unlike the exit time of session 6).
_MTIME = _WHERE + '''
import builtins
import time

_SLOT, _SLOTS = 20_000_000, 32


def _said():
    return os.fstat(2).st_mtime_ns // _SLOT % _SLOTS


def _say(n):
    # write inside slot n's cycle, past the middle of the slot (the inode's clock is coarse:
    # up to a tick behind time.time_ns())
    while True:
        t = time.time_ns()
        if t // _SLOT % _SLOTS == n % _SLOTS and _SLOT // 2 <= t % _SLOT < _SLOT * 3 // 4:
            os.write(2, b".")
            return
        time.sleep(0.001)


if _where("_configs_child") is not None:
    _say(0)
if _batch is not None:
    os.write(1, b".")  # does this kernel keep a pipe's times? (Linux >= 6.8 does not)
    if abs(os.fstat(1).st_mtime_ns - time.time_ns()) < 100_000_000:
        builtins.seen = _said()


def send(self, header, arrays=()):
    if header.get("t") == "unit_done" and _batch is not None:
        _say(builtins.seen)
    _send(self, header, arrays)


sandbox_child._Out.send = send
'''


def _pipes_keep_times() -> bool:
    """Whether a write sets an anonymous pipe's mtime (Linux 6.8 stopped updating the times
    of anonymous pipes)."""
    import os
    import time

    r, w = os.pipe()
    try:
        before = os.fstat(w).st_mtime_ns
        time.sleep(0.05)
        os.write(w, b".")
        return os.fstat(w).st_mtime_ns != before
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.xfail(_pipes_keep_times(), strict=True, reason=(
    "hole (seccomp on, kernels that keep anonymous pipes' times, before about 6.8): the mtime of the stderr pipe (fd 2, shared by the sandbox process and "
    "every batch, written by nothing else) is set by a batch's last write to it, at a time it "
    "chooses; the next batch reads it with fstat(): about log2(wait / clock tick) bits per "
    "batch (5 here), stored rather than timed. The same holds for stdout's mtime and, where "
    "the zygote does not touch it, any shared inode's atime. Fix: the zygote gives each batch "
    "its own stdout/stderr pipes (made before the fork, read through the zygote or passed to "
    "the judge), or batches get no fstat on the shared descriptors (seccomp: fstat/newfstatat/"
    "statx refused on fds 0-2 and the result pipe; numpy/Python need fstat only on files they "
    "open, which a sealed batch cannot); at least the zygote resets the times (futimens on the "
    "pipe after each waitpid: then only the reset time is seen)"))
@pytest.mark.usefixtures("parent")
def test_pipe_timestamps_carry_nothing_between_batches():
    """Where the kernel does not keep anonymous pipes' times, this holds by the kernel."""
    ev = _run(_controller(_COUNT, _MTIME), on_error="record")
    _played_more_than_one_draw(ev)


# ---- stale frames that carry the batch's own token ------------------------------------------

# Session 6's frames written before the exit for the next batch, now with the token of the batch
# that wrote them (the only one it knows): read by the drain before the next unit is sent (the
# token still the writer's, but the state is "reaping"), or after it, in the same read as a
# forged "reaped" (the token is then the next batch's).
_OWN_TOKEN = '{"t": "round", "m": msgs, "k": _batch.f_locals["unit"]["k"]}'


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", sorted(_PAST_HOW))
def test_stale_frames_with_the_writers_own_token_are_not_judged(how, monkeypatch):
    monkeypatch.setattr(supervisor_module, "PENDING_HINT_SECONDS", 0.05)
    past = _PAST.replace("{how}", _PAST_HOW[how].replace('{"t": "round", "m": msgs}',
                                                         _OWN_TOKEN))
    assert _OWN_TOKEN in past
    with pytest.raises(SandboxError) as info:
        _run(_controller(_COUNT, past), on_error="record", limits=SHORT)
    v = info.value.verdict  # a protocol error, not a run that just timed out
    assert v.kind == "crash" and "wire protocol" in v.message, str(v)


# ---- honest candidates: frames larger than the result pipe at the exit check ------------------

# Each episode prints 320 KiB; the batch's unit_done frame carries 1.25 MiB of printed output,
# more than the result pipe holds (1 MiB): it is written in pieces while the supervisor reads
# them, and the process exits right after the last piece.
_PRINTER = '''
class Printer:
    NAME = "printer"

    def __init__(self, n: int = 4):
        self.n = n

    @staticmethod
    def schedule(beta):
        return {"n": 4}

    def run(self, ep):
        votes = {}
        for a in ep.read_new_many(self.n):
            votes[int(a)] = votes.get(int(a), 0) + 1
            print("x" * 16383)
        print("y" * (256 * 1024 - 1))
        return max(sorted(votes), key=votes.get) if votes else None
'''


@pytest.mark.usefixtures("parent")
def test_honest_output_larger_than_the_result_pipe_is_no_protocol_error(tmp_path):
    path = tmp_path / "printer.py"
    path.write_text(_PRINTER)
    limits = SandboxLimits(**{**FAST.__dict__, "max_output_bytes": 8 << 20})
    ref = evaluate(str(path), [STORE], [0.5], PROTO, on_error="record", episodes=True)
    assert not ref.errors
    ev = evaluate_sandboxed(str(path), [STORE], [0.5], PROTO, limits=limits, on_error="record",
                            episodes=True)
    assert ev.rows == ref.rows and ev.episodes == ref.episodes
    assert len(ev.stdout) > 4 * (1 << 20), len(ev.stdout)  # every batch's output, whole


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("off", ["seccomp", "landlock", "namespaces", "nobody", "seccomp,nobody"])
def test_an_honest_candidate_gets_its_numbers_with_a_mechanism_missing(off, monkeypatch):
    """A platform without one of the mechanisms (no libseccomp, an old kernel, no nobody user)
    still runs an honest candidate to the in-process numbers: the sandbox process preloads what
    the batches need after lock-down (nothing can be imported then)."""
    monkeypatch.setenv("AUTOTTS_SANDBOX_DISABLE", off)
    ref = evaluate("asc", [STORE], [0.0, 1.0], PROTO, on_error="record")
    ev = evaluate_sandboxed("asc", [STORE], [0.0, 1.0], PROTO, limits=FAST, on_error="record",
                            allow_weak_sandbox=True)
    assert ev.errors == ref.errors
    assert ev.rows == ref.rows


# ---- the batch's own token on frames of another state --------------------------------------

_TOKENED = _WHERE + '''
import time


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") == "unit_done" and _batch is not None:
        # The batch's own token (every frame of a batch carries it): a frame that passes the
        # token check must still be refused by the judge's state machine after unit_done.
        _send(self, dict({frame!r}, k=header.get("k")), _rows({frame!r}))
        {then}
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("then", ["os._exit(0)", "time.sleep(30)"], ids=["exits", "stays"])
@pytest.mark.parametrize("frame", ["unit_done", "round"])
def test_frames_with_the_batchs_own_token_after_unit_done_end_the_run(frame, then):
    """Session 6 sent frames of other states without a token (the token check alone refuses
    them now). With the batch's real token, a second unit_done or a round after unit_done
    reaches the state machine, which is in 'reaping': a protocol error (crash), nothing
    judged, whether the process then exits or stays."""
    frames = {"unit_done": {"t": "unit_done", "stdout": "", "dropped": 0},
              "round": {"t": "round", "m": [[0, "answer", [None]]]}}
    extra = _TOKENED.format(frame=frames[frame], then=then) + \
        "\nsandbox_child._Out.send = send\n"
    with pytest.raises(SandboxError) as info:
        _run(_controller("        return ep.read_new()\n", extra), limits=SHORT)
    v = info.value.verdict
    assert v.kind == "crash" and "wire protocol" in v.message, str(v)
    assert "not the current batch's" not in v.message  # refused by state, not by token
