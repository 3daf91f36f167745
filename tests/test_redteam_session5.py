"""Red team, session 5: the "reaped" hint that releases the next batch's frame (the supervisor
checks /proc once when the sandbox process says it reaped the last batch), the /proc scan that
decides whether a batch's process is gone, and the sandbox process that no longer loads the
judge's side (lazy autotts.sandbox, no store, no pyarrow).

Candidates here mostly run with `_unrestricted=True` (real builtins, no RestrictedPython: code
execution inside the sandbox process, as the threat model assumes). The invariant attacked: no
batch process outlives its batch to play another (it would play the next draw with what it
learned of the questions' pools). Each test asserts what the sandbox must do. Found and fixed in
the same session: a batch process that answered the next batch's rounds while that batch's
frame was held (nothing is judged now until the process is gone); the knobs process counted
among the sandbox's own when the first scan came late (the sandbox forks nothing before the
judge's "go"); a batch that left the process group where no seccomp filter refuses setsid /
setpgid (the scan follows the leader's descendants too); Counter.most_common / statistics.mode
failing on a lazy import of heapq (preloaded)."""

from __future__ import annotations

import ast
import time

import pytest

from autotts.evaluate import evaluate
from autotts.sandbox import SandboxError, SandboxLimits, evaluate_sandboxed
from autotts.sandbox import supervisor as supervisor_module
from tests.test_sandbox import FAST, parent  # noqa: F401 (fixture)
from tests.test_sandbox_boundary import PROTO, STORE, _controller, _run

Q = len(STORE.questions)  # questions of the store: what one batch (one draw) plays
SHORT = SandboxLimits(**{**FAST.__dict__, "episode_seconds": 2})

# ---- helpers: a candidate that counts the episodes its process has played ---------------------

# Each episode raises with the number of episodes its process has played so far (kept in the
# builtins module: it survives a fresh execution of the candidate's module in the same process).
_COUNT = '''        import builtins
        n = getattr(builtins, "seen", 0) + 1
        builtins.seen = n
        raise ValueError(f"episode {n} of this process")
'''


def _said(error: dict) -> object:
    """What a probing candidate reported in its error message (a Python literal)."""
    return ast.literal_eval(error["message"].split("<<", 1)[1].rsplit(">>", 1)[0])


def _counts(ev) -> list[int]:
    return [int(e["message"].split("episode ")[1].split(" ")[0]) for e in ev.errors]


def _holds(run) -> str:
    """Run a hostile candidate that counts its episodes: the sandbox holds if it ends the run
    (a timeout or a crash verdict) or if no process played more than one draw of the store."""
    try:
        ev = run()
    except SandboxError as e:
        assert e.verdict.kind in ("timeout", "crash"), str(e.verdict)
        return e.verdict.kind
    counts = _counts(ev)
    assert len(counts) == PROTO.draws * Q
    assert max(counts) == Q, f"one process played {max(counts)} episodes: more than one draw"
    return "ok"


# The candidate's way into the machinery of its own batch process: the frame of `_unit_child`
# (the batch's entry point) holds the request, the unit frame, the hint word and the class.
_FIND = '''
import autotts.sandbox.child as sandbox_child
from autotts.sandbox.wire import read_frame

_send = sandbox_child._Out.send


def _unit_frame():
    f = sys._getframe(1)
    while f.f_code.co_name != "_unit_child":
        f = f.f_back
    return f.f_locals


def _play(out, loc, unit, stdin):
    """Play one more batch in this process, with the class (and memory) it already has."""
    sched = sandbox_child.Scheduler(loc["cls"], unit["config"], loc["req"], out, loc["hint"])
    sched.run_unit(unit, lambda: read_frame(stdin))
    _send(out, {"t": "unit_done", "stdout": "", "dropped": 0, "k": unit.get("k")})
'''


# ---- forged "reaped" hints -------------------------------------------------------------------

_STAY = '''
def send(self, header, arrays=()):
    {before}
    _send(self, header, arrays)
    if header.get("t") == "unit_done":
        {after}
        while True:  # stay alive, waiting to read what comes next
            pass


sandbox_child._Out.send = send
'''

_REAPED = '_send(self, {"t": "reaped"})'


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("before,after", [
    # a hint before the batch is done: nothing is pending yet
    (f'if header.get("t") == "unit_done": {_REAPED}', "pass"),
    # a burst of hints once it is done
    ("pass", f"for _ in range(2000): {_REAPED}"),
    # a hint with every frame of the batch, rounds included
    (_REAPED, _REAPED),
], ids=["before-unit-done", "burst-after", "with-every-frame"])
def test_forged_reaped_hints_never_release_the_next_frame(before, after):
    """A batch process that stays alive after its batch, forging the sandbox process's "reaped"
    hint before, with and after its frames: the next frame still waits for /proc to show the
    process gone, so the run ends as a timeout ("did not exit")."""
    extra = _FIND + _STAY.format(before=before, after=after)
    with pytest.raises(SandboxError) as info:
        _run(_controller("        return ep.read_new()\n", extra), limits=SHORT)
    assert info.value.verdict.kind == "timeout", str(info.value.verdict)
    assert "did not exit" in info.value.verdict.message


_HONEST_FORGER = '''
def send(self, header, arrays=()):
    for _ in range({n}):
        _send(self, {{"t": "reaped"}})
    _send(self, header, arrays)


sandbox_child._Out.send = send
'''

_HONEST_BODY = '''        i = ep.branch()
        while not ep.is_finished(i):
            ep.advance(i)
        return ep.latest_answer(i)
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("n", [1, 500])
def test_forged_hints_in_every_phase_change_no_result(n):
    """Hints forged before every frame (the knobs, every round, every batch's end), by a
    candidate that otherwise plays honestly: the same rows and episodes as without them."""
    ref = _run(_controller(_HONEST_BODY), episodes=True)
    ev = _run(_controller(_HONEST_BODY, _FIND + _HONEST_FORGER.format(n=n)), episodes=True)
    assert ev.rows == ref.rows and ev.episodes == ref.episodes
    assert ref.rows[0]["accuracy"] > 0


# ---- playing the next batch while its frame is held -------------------------------------------

_PLAY_ON = '''
def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") != "unit_done":
        return
    loc = _unit_frame()
    req, unit = loc["req"], loc["unit"]
    stdin = sys.stdin.buffer.raw
    # The judge starts the next batch's episodes when it reads unit_done and holds only the frame
    # that tells the next batch process about them; their slots and public facts are this
    # batch's. Play them here, with this process's memory, before anyone looks at /proc.
    for _ in range(len(req["betas"]) * req["proto"]["draws"] - 1):
        _play(self, loc, unit, stdin)
    os._exit(0)


sandbox_child._Out.send = send
'''


@pytest.mark.usefixtures("parent")
def test_a_batch_cannot_play_the_next_batch_while_its_frame_is_held(monkeypatch):
    """After its unit_done, a batch process sends rounds for the next batch's episodes itself
    (same slots as its own: one draw of the same questions). The window is widened from 0.2 s
    to 5 s so that the outcome does not depend on the machine's load: with the default the
    attack needs each batch to take under 0.2 s (a toy store's batch takes a few ms)."""
    monkeypatch.setattr(supervisor_module, "PENDING_HINT_SECONDS", 5.0)
    _holds(lambda: _run(_controller(_COUNT, _FIND + _PLAY_ON), on_error="record",
                        limits=SHORT))


# ---- a configs process counted among the sandbox's own processes -----------------------------

_CONFIGS_STAYS = '''
def _locals(name):
    f = sys._getframe(1)
    while f.f_code.co_name != name:
        f = f.f_back
    return f.f_locals


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") != "configs":
        return
    loc = dict(_locals("_configs_child"), hint=_locals("_forked")["hint"])
    stdin = sys.stdin.buffer.raw
    # The sandbox process waits for this one; the batches' frames come to whoever reads first.
    for _ in range(len(loc["req"]["betas"]) * loc["req"]["proto"]["draws"] - 1):
        unit, _ = read_frame(stdin)
        _play(self, loc, unit, stdin)
    os._exit(0)


sandbox_child._Out.send = send
'''


@pytest.mark.usefixtures("parent")
def test_the_knobs_process_cannot_stay_to_play_the_batches_on_time():
    """The same knobs process, with the supervisor on time to its first scan: the process is
    not one of the sandbox's own, the first batch's frame waits for it, and the run times out."""
    kind = _holds(lambda: _run(_controller(_COUNT, _FIND + _CONFIGS_STAYS), on_error="record",
                               limits=SHORT))
    assert kind == "timeout"


@pytest.mark.usefixtures("parent")
def test_the_knobs_process_cannot_stay_to_play_the_batches(monkeypatch):
    """The knobs process (which runs the candidate's module and schedule()) stays after sending
    the knobs and reads the batches' frames itself. The supervisor here is 0.5 s late to its
    first /proc scan (as on a loaded machine): the sandbox must still see that process as one
    that has to be gone before a batch's frame goes out."""
    import autotts.sandbox.lockdown as lockdown_module

    real, calls = lockdown_module.live_sandbox_processes, []

    def late(pgid: int, *args, **kw) -> list[int]:
        if not calls:
            time.sleep(0.5)
        calls.append(pgid)
        return real(pgid, *args, **kw)

    monkeypatch.setattr(lockdown_module, "live_sandbox_processes", late)
    _holds(lambda: _run(_controller(_COUNT, _FIND + _CONFIGS_STAYS), on_error="record",
                        limits=SHORT))


# ---- leaving the process group, hiding from the scan, staying in other ways -------------------

_LEAVE = '''
def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") != "unit_done":
        return
    loc = _unit_frame()
    try:
        {how}
    except OSError:
        while True:  # refused: stay anyway
            pass
    stdin = sys.stdin.buffer.raw
    # out of the sandbox's process group: the /proc scan looks for that group only
    # every later batch (it knows how many), then gone before anyone reads the "stop" frame
    for _ in range(len(loc["req"]["betas"]) * loc["req"]["proto"]["draws"] - 1):
        unit, _ = read_frame(stdin)
        _play(self, loc, unit, stdin)
    os._exit(0)


sandbox_child._Out.send = send
'''

_HOW = {"setsid": "os.setsid()", "setpgid": "os.setpgid(0, 0)"}


def _no_seccomp(monkeypatch) -> None:
    """The sandbox without its seccomp filter: what a platform without libseccomp gets (it
    counts as strong there with namespaces, an empty root or Landlock)."""
    from autotts.sandbox.lockdown import is_strong, probe

    if not is_strong(probe(["seccomp"])):
        pytest.skip("without seccomp this platform is not a strong sandbox")
    monkeypatch.setenv("AUTOTTS_SANDBOX_DISABLE", "seccomp")


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", sorted(_HOW))
def test_a_batch_cannot_leave_the_process_group(how):
    """setsid() / setpgid(0, 0) in a batch process: refused by the seccomp allow-list, so it
    stays in the group the /proc scan watches and the run ends as a timeout."""
    kind = _holds(lambda: _run(_controller(_COUNT, _FIND + _LEAVE.format(how=_HOW[how])),
                               on_error="record", limits=SHORT))
    assert kind == "timeout"


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("how", sorted(_HOW))
def test_a_batch_cannot_leave_the_process_group_without_seccomp(how, monkeypatch):
    _no_seccomp(monkeypatch)
    _holds(lambda: _run(_controller(_COUNT, _FIND + _LEAVE.format(how=_HOW[how])),
                        on_error="record", limits=SHORT))


_RENAME = '''
import ctypes


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") == "unit_done":
        # a command name that ends like a /proc/<pid>/stat prefix of a zombie in another group
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p({name!r}), 0, 0, 0)  # PR_SET_NAME
        while True:
            pass


sandbox_child._Out.send = send
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "no-seccomp"])
@pytest.mark.parametrize("name", [b") Z 1 1 1 1", b"x)\nZ 0 0\n)", b") X 7 7 7 7 7 7"])
def test_a_command_name_cannot_hide_a_batch_from_the_scan(name, seccomp, monkeypatch):
    """A batch process renames itself (prctl PR_SET_NAME, where seccomp lets it) to a name
    with ')', spaces, newlines and a fake zombie state and process group, then stays: the scan
    reads the fields after the last ')', so it still sees the process, and the run times out."""
    if not seccomp:
        _no_seccomp(monkeypatch)
    with pytest.raises(SandboxError) as info:
        _run(_controller("        return ep.read_new()\n", _FIND + _RENAME.format(name=name)),
             limits=SHORT)
    assert info.value.verdict.kind == "timeout", str(info.value.verdict)
    assert "did not exit" in info.value.verdict.message


_ORPHAN_THREAD = '''
import ctypes
import threading


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") != "unit_done":
        return
    loc = _unit_frame()
    stdin = sys.stdin.buffer.raw

    def rest():
        for _ in range(len(loc["req"]["betas"]) * loc["req"]["proto"]["draws"] - 1):
            unit, _ = read_frame(stdin)
            _play(self, loc, unit, stdin)
        os._exit(0)

    try:
        threading.Thread(target=rest).start()
    except RuntimeError:
        while True:  # no thread: stay anyway
            pass
    # SYS_exit ends only this thread: the leader shows as a zombie ("Z") while the other runs
    ctypes.CDLL(None).syscall(60, 0)


sandbox_child._Out.send = send
'''


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "no-seccomp"])
def test_a_thread_cannot_outlive_its_zombie_leader(seccomp, monkeypatch):
    """A batch process starts a thread to play on and ends its main thread alone, so that /proc
    shows the process as a zombie (which the scan skips). No thread can start in a sealed
    batch (the seal's filter, RLIMIT_NPROC), so the process just stays and times out."""
    if not seccomp:
        _no_seccomp(monkeypatch)
    kind = _holds(lambda: _run(_controller(_COUNT, _FIND + _ORPHAN_THREAD), on_error="record",
                               limits=SHORT))
    assert kind == "timeout"


_ESCAPES = '''        import ctypes
        import threading
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        got = {}

        def attempt(name, f):
            try:
                r = f()
            except (OSError, RuntimeError):
                got[name] = "refused"
                return
            got[name] = "refused" if r == -1 else f"DONE {r}"

        def fork():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            return pid

        def vfork():
            pid = libc.syscall(58)  # SYS_vfork
            if pid == 0:
                libc.syscall(231, 0)  # exit_group, in the child
            return pid

        attempt("fork", fork)
        attempt("vfork", vfork)
        attempt("clone3", lambda: libc.syscall(435, None, 0))
        attempt("execv", lambda: os.execv("/bin/true", ["true"]))
        attempt("setsid", os.setsid)
        attempt("setpgid", lambda: os.setpgid(0, 0))
        attempt("prctl-name", lambda: libc.prctl(15, ctypes.c_char_p(b"x"), 0, 0, 0))
        attempt("ptrace-zygote", lambda: libc.ptrace(16, parent, None, None))  # ATTACH
        attempt("ptrace-traceme", lambda: libc.ptrace(0, 0, None, None))
        attempt("kill-zygote", lambda: os.kill(parent, 0))
        attempt("pidfd-zygote", lambda: os.pidfd_open(parent))
        attempt("thread", lambda: threading.Thread(target=lambda: None).start())
        raise ValueError("<<" + repr(sorted(got.items())) + ">>")
'''


@pytest.mark.usefixtures("parent")
def test_a_sealed_batch_has_no_way_to_outlive_itself():
    """Every other way for a batch process to keep running past its batch or to act on the
    sandbox process: a new process or thread (fork, vfork, clone3), a new program, a new session
    or group, a new command name, tracing or signalling the sandbox process. All refused."""
    ev = _run(_controller(_ESCAPES), on_error="record")
    assert ev.errors
    for e in ev.errors:
        got = dict(_said(e))
        assert len(got) == 12 and set(got.values()) == {"refused"}, got


# ---- the sandbox process without the judge's side (5578566) ----------------------------------

_MAJORITY = '''
{imports}


class Majority:
    NAME = "majority"

    @staticmethod
    def schedule(beta):
        return {{}}

    def run(self, ep):
        finals = [int(a) for a in ep.read_new_many(5)]
        return {vote}
'''

_VOTES = {
    "counter": ("from collections import Counter", "Counter(finals).most_common(1)[0][0]"),
    "statistics-mode": ("import statistics", "statistics.mode(finals)"),
    "heapq-imported": ("import heapq\nfrom collections import Counter",
                       "Counter(finals).most_common(1)[0][0]"),
}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("vote", [
    # Counter.most_common imports heapq lazily; statistics.mode calls it (child.PRELOAD).
    "counter",
    "statistics-mode",
    "heapq-imported",
])
def test_plain_majority_votes_give_the_in_process_numbers(vote, tmp_path):
    """Plain (admitted, restricted) controllers that vote the usual ways: the sandbox gives the
    numbers in-process evaluation gives."""
    imports, expr = _VOTES[vote]
    path = tmp_path / "majority.py"
    path.write_text(_MAJORITY.format(imports=imports, vote=expr))
    ref = evaluate(str(path), [STORE], [0.5], PROTO, on_error="record")
    assert not ref.errors and ref.rows[0]["accuracy"] > 0
    ev = evaluate_sandboxed(str(path), [STORE], [0.5], PROTO, limits=FAST, on_error="record")
    assert ev.errors == ref.errors
    assert ev.rows == ref.rows


_REACH_JUDGE = '''        import autotts.sandbox as pkg
        found = []
        for name in ("evaluate_sandboxed", "SandboxLimits", "run_sandbox_task"):
            try:
                getattr(pkg, name)
                found.append(name)
            except Exception as e:
                found.append(type(e).__name__)
        loaded = sorted(m for m in ("autotts.store", "autotts.sandbox.evaluation",
                                    "autotts.sandbox.supervisor", "autotts.sandbox.judge",
                                    "pyarrow") if m in sys.modules)
        raise ValueError("<<" + repr([found, loaded]) + ">>")
'''


@pytest.mark.usefixtures("parent")
def test_the_lazy_package_loads_nothing_after_lock_down():
    """With code execution, the candidate asks the lazy `autotts.sandbox` package for the
    judge's names: the import that would load them cannot read a file after lock-down, so it
    fails (the candidate's own exception, recorded), and none of the judge's modules, the store
    or pyarrow is in the process to be read."""
    ev = _run(_controller(_REACH_JUDGE), on_error="record")
    assert len(ev.errors) == PROTO.draws * Q
    found, loaded = _said(ev.errors[0])
    assert loaded == []
    assert not any(name in found for name in ("evaluate_sandboxed", "SandboxLimits",
                                              "run_sandbox_task")), found
