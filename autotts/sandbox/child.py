"""The sandbox process (DESIGN §7): runs one untrusted controller, and nothing else.

Started by `autotts.sandbox.supervisor` as `python -I -c ...` in a new session, with a scrubbed
environment and an empty temporary working directory. It reads its init frame (controller source,
β grid, knob overrides, limits; no replay data, no store path, no gold) from stdin, loads what the
candidate will import, locks itself down (autotts.sandbox.lockdown), then executes the candidate
with the guarded builtins of autotts.sandbox.guards.

Episodes run against `ClientEpisode` handles: each action is a request to the trusted judge. To
make that cheap, the episodes of a work unit run side by side as greenlets (coroutines on one
thread): the scheduler resumes every episode that has a reply, collects the next request of each,
and sends them in one frame; the judge answers them all in one frame. A controller is written
for one episode and never sees this.

What the child sends is untrusted by construction: the judge keeps every account (tokens, reveals,
actions, answers' store classes) and validates every message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import traceback
from collections import deque
from types import ModuleType
from typing import Any

import numpy as np

from autotts.controller import ControllerSpec, find_controller_class
from autotts.engine import InvalidAction
from autotts.errors import ConfigError, ControllerError
from autotts.sandbox.admission import (
    ALLOWED_IMPORTS,
    Verdict,
    admit,
    compile_candidate,
    imported_modules,
)
from autotts.sandbox.client import Mirrors, pending_events
from autotts.sandbox.guards import (
    CANDIDATE_MODULE,
    STATE,
    PrintSink,
    candidate_builtins,
    class_hook,
    deny_objects,
)
from autotts.sandbox.wire import OP_ANSWER, OP_JSON, ROUND_COLS, pack_frame, read_frame
from autotts.units import controller_lines, shown_answer

# (Names used in every batch or episode are imported here, once: an import statement in a
# function costs ~0.5 us per call even when the module is loaded.)

# Loaded before lock-down, whatever the candidate imports: numpy loads some submodules lazily
# (np.unique -> numpy.ma), and nothing can be read from disk afterwards.
# Loaded before lock-down (nothing can be imported after it): numpy's submodules, and the small
# standard modules a candidate may import or reach lazily (Counter.most_common imports heapq on
# first use; statistics.mode calls it).
PRELOAD = ("numpy.linalg", "numpy.random", "numpy.fft", "numpy.ma", "numpy.polynomial",
           "numpy.lib.stride_tricks", "heapq", "bisect", "statistics", "math", "itertools",
           "functools", "collections", "dataclasses", "typing")


FD_FLAGS: dict[int, int] = {}  # the zygote's descriptors' status flags before candidate code
# Where no seccomp filter binds the batches: the rest of this process's state that a batch can
# change from outside and the next one would inherit, as it was before candidate code
# (_snapshot_inherited); restored after each batch (_restore_inherited).
INHERITED: dict[str, Any] = {}
# fcntl registers of a shared open file description or pipe, besides its status flags: the
# owner and owner signal (F_SETOWN, F_SETSIG) and a pipe's capacity (F_SETPIPE_SZ).
_FCNTL_REGISTERS = ((fcntl.F_GETOWN, fcntl.F_SETOWN), (fcntl.F_GETSIG, fcntl.F_SETSIG),
                    (fcntl.F_GETPIPE_SZ, fcntl.F_SETPIPE_SZ))
BUILTINS: dict[str, Any] | None = None  # the candidate's builtins, built once by the zygote


class Fatal(BaseException):
    """Ends the run with a verdict; a BaseException so that no episode handler records it."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class _Out:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, header: dict[str, Any], arrays: list[np.ndarray] | tuple[()] = ()) -> None:
        import os

        view = memoryview(pack_frame(header, arrays))
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def candidate_traceback(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == STATE.filename]
    lines = []
    for f in frames[-6:]:
        text = ""
        if f.lineno and 0 < f.lineno <= len(STATE.source_lines):
            text = STATE.source_lines[f.lineno - 1].strip()
        lines.append(f"line {f.lineno}, in {f.name}: {text}")
    lines.append(f"{type(exc).__name__}: {_text(exc)[:500]}")
    return "\n".join(lines)


def _text(e: BaseException) -> str:
    try:
        return str(e)
    except Exception:
        return "?"


def _check_violation(context: dict[str, Any]) -> None:
    if STATE.violation is not None:
        message, line = STATE.violation
        tb = None
        if line and 0 < line <= len(STATE.source_lines):
            tb = f"line {line}: {STATE.source_lines[line - 1].strip()}"
        raise Fatal(Verdict("forbidden", message, tb, {**context, "line": line}))


def _exception_verdict(e: BaseException, context: dict[str, Any]) -> Verdict:
    _check_violation(context)
    if isinstance(e, MemoryError):
        return Verdict("memory", "memory limit exceeded (MemoryError)", candidate_traceback(e),
                       context)
    return Verdict("exception", f"{type(e).__name__}: {_text(e)[:300]}", candidate_traceback(e),
                   context)


def _plain(v: Any) -> Any:
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


_INT_TYPES = (int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
              np.uint64)


def _final(ans: Any) -> tuple[str, list[Any]]:
    """What run() returned, as the message that ends the episode."""
    if ans is None:
        return "answer", [None]
    if type(ans) in _INT_TYPES:
        a = int(ans)
        if -(2**31) <= a < 2**31:
            return "answer", [a]
        shown = shown_answer(a)
    elif isinstance(ans, int) and not isinstance(ans, bool):
        shown = f"a {type(ans).__name__[:40]} (an int subclass)"
    else:
        try:
            shown = shown_answer(ans)
        except Exception:
            shown = f"a {type(ans).__name__[:40]}"
    return "error", ["non_answer", f"run() returned {shown}, not an answer class", None]


_RUNNER: type | None = None


def _runner_type() -> type:
    """The greenlet subclass episodes run in, made once: by the zygote (_preload), so that no
    batch makes it again."""
    global _RUNNER
    if _RUNNER is None:
        import greenlet

        class Runner(greenlet.greenlet):
            """A greenlet that runs episodes one after another (Scheduler._run_episodes).
            `ended`: True once the episode it runs has ended (the runner lives on, parked:
            greenlet's own `dead` stays False), which is what Scheduler._collect asks; `slot`
            is that episode's."""

            ended = False
            slot = -1

        _RUNNER = Runner
    return _RUNNER


class Scheduler:
    """Runs the episodes of one work unit as greenlets, one round trip per round of actions."""

    def __init__(self, cls: type, config: dict[str, Any], req: dict[str, Any], out: _Out,
                 hint: np.ndarray) -> None:
        import greenlet

        self.runner = _runner_type()
        self.getcurrent = greenlet.getcurrent
        self.main = greenlet.getcurrent()
        self.cls = cls
        self.config = config
        # The same in every batch: which draws are traced is the judge's alone (trace_draws).
        self.tracing = bool(req["traces"])
        # Groups of episodes that take turns (run_unit): two, or one where the evaluation's
        # workers already keep every core busy (evaluation.round_groups).
        self.groups = 1 if req.get("groups") == 1 else 2
        self.out = out
        self.hint = hint
        self.live: dict[int, Any] = {}
        self.idle: list[Any] = []  # runners whose episode has ended, parked for the next one

    def _body(self, ep: Any, config: dict[str, Any]) -> tuple[str, list[Any]]:
        try:
            ans = self.cls(**config).run(ep)
        except InvalidAction as e:
            return "error", ["invalid_action", _text(e), None]
        except MemoryError:
            raise
        except Exception as e:  # the controller's own bug, with its own lines
            return "error", ["exception", controller_lines(e, STATE.filename),
                             candidate_traceback(e)]
        except BaseException as e:  # SystemExit, KeyboardInterrupt ... of candidate code
            if isinstance(e, Fatal):
                raise
            return "error", ["exception", f"{type(e).__name__}: {_text(e)[:300]}",
                             candidate_traceback(e)]
        finally:
            ep.close()
        return _final(ans)

    def _episode(self, ep: Any, config: dict[str, Any]) -> tuple[str, list[Any], Any]:
        kind, payload = self._body(ep, config)
        return kind, payload, pending_events(ep)

    def _run_episodes(self, ep: Any, config: dict[str, Any]) -> None:
        """A runner's life: its episode, then, parked, the next one it is given (_start), until
        the process exits. A greenlet that returned would free its CPython data stack (a 16 KiB
        mapping of its own: an mmap, a page fault and a munmap per episode)."""
        me, switch, idle = self.getcurrent(), self.main.switch, self.idle
        while True:
            msg = self._episode(ep, config)
            del ep, config  # nothing of the episode stays alive while the runner is parked
            me.ended = True  # _collect: this message ends the episode
            idle.append(me)
            ep, config = switch(msg)

    def _request_for(self, g: Any, slot: int) -> Any:
        main, current = self.main, self.getcurrent
        switch = main.switch

        def request(msg: tuple[Any, ...]) -> tuple[Any, ...]:
            # A handle kept from another episode of the batch (a runner's earlier episode too)
            if current() is not g or g.slot != slot:
                from autotts.engine import InvalidAction

                raise InvalidAction("this episode handle belongs to another episode")
            return switch(msg)

        return request

    def _collect(self, slot: int, g: Any, msg: Any) -> None:
        """The episode's next message, as a row of its group's round (and what goes beside
        it: a raw branch list, a JSON message, trace events)."""
        if STATE.violation is not None:
            _check_violation({"slot": slot})
        group = self.group[slot]
        if g.ended:  # the episode's end: an answer (a row), or an error (JSON, its text)
            kind, payload, events = msg
            del self.live[slot]
            del self.group[slot]
            self.mirrors.end(slot)
            if kind == "answer":
                v = payload[0]
                op, a, b, arr, js = OP_ANSWER, 0 if v is None else 1, v or 0, None, None
            else:
                op, a, b, arr, js = OP_JSON, 0, 0, None, [kind, payload]
        else:
            op, a, b, arr, js, events = msg
        if arr is not None:
            (self.masks if arr.dtype.kind == "b" else self.indices)[group].append(arr)
        e = 0
        if js is not None:
            self.json[group].append([slot, *js, events] if events else [slot, *js])
        elif events:
            self.events[group].append(events)
            e = 1
        self.rows[group] += (slot, op, a, b, e)

    def _first(self, slot: int, g: Any, ep: Any, config: dict[str, Any]) -> None:
        try:
            msg = g.switch(ep, config)
        except MemoryError as e:
            raise Fatal(Verdict("memory", "memory limit exceeded (MemoryError)",
                                candidate_traceback(e), {"slot": slot})) from None
        self._collect(slot, g, msg)

    def _start(self, unit: dict[str, Any], facts: list[Any], group: int) -> None:
        config, idle, mirrors = self.config, self.idle, self.mirrors
        if facts:
            mirrors.make_room(len(facts), max(f[1] for f in facts))
        for k, (slot, pool, no_answer, delta) in enumerate(facts):
            if idle:
                g = idle.pop()
                g.ended = False
            else:
                g = self.runner(self._run_episodes)
            g.slot = slot
            ep = mirrors.open(slot, self._request_for(g, slot), pool, delta, unit["kappa"],
                              unit["budget"], no_answer, self.tracing)
            self.live[slot] = g
            # The first episodes are dealt to both groups; later ones join the group whose
            # reply freed their place.
            self.group[slot] = k % self.groups if group < 0 else group
            self.hint[0] = slot
            self._first(slot, g, ep, config)

    def _send_round(self, g: int) -> None:
        idx, masks = self.indices[g], self.masks[g]
        rows = np.array(self.rows[g], dtype=np.int64).reshape(-1, ROUND_COLS)
        self.out.send({"t": "round", "m": self.json[g], "e": self.events[g], "k": self.token},
                      [rows, np.concatenate(idx).astype(np.int32, copy=False) if idx else _NO_INDICES,
                       np.concatenate(masks) if masks else _NO_MASKS])
        self.rows[g], self.json[g], self.events[g] = [], [], []
        self.indices[g], self.masks[g] = [], []
        self.in_flight.append(g)

    def _on_reply(self, g: int, reply: dict[str, Any], arrays: list[np.ndarray]) -> None:
        rows, jb, jd, ja, jf = arrays
        # Branch indices as intp, depths as the mirror's int64 (the judge sends both as int64)
        jb = jb.astype(np.intp, copy=False)
        jd = jd.astype(np.int64, copy=False)
        # Every reveal of the round, written to the episodes' mirrors at once; each episode
        # is then told where its own are (for its history).
        counts = rows[:, 4]
        if reply["x"]:  # a refused action reveals nothing (n is -1)
            counts = np.maximum(counts, 0)
        self.mirrors.apply(rows[:, 0], counts, jb, jd, ja, jf)
        reveals = (jb, jd, ja)
        refusals = iter(reply["x"])
        pos = 0
        live, hint, collect = self.live, self.hint, self._collect
        # (This group's next round: _collect's path for an action without JSON or trace
        # events, inline.)
        out, masks, indices = self.rows[g], self.masks[g], self.indices[g]
        for slot, gen, probes, actions, n in rows.tolist():
            if n >= 0:  # done: what it revealed is next in line
                end = pos + n
                args: tuple[Any, ...] = (gen, probes, actions, reveals, pos, end)
                pos = end
            else:  # refused: its message is the next
                args = (next(refusals), gen, probes, actions)
            episode = live[slot]
            hint[0] = slot
            try:
                msg = episode.switch(args)
            except MemoryError as e:
                raise Fatal(Verdict("memory", "memory limit exceeded (MemoryError)",
                                    candidate_traceback(e), {"slot": slot})) from None
            if not episode.ended and STATE.violation is None:
                op, a, b, arr, js, events = msg
                if js is None and not events:
                    if arr is not None:
                        (masks if arr.dtype.kind == "b" else indices).append(arr)
                    out += (slot, op, a, b, 0)
                    continue
            collect(slot, episode, msg)

    def run_unit(self, unit: dict[str, Any], read: Any) -> None:
        """Two groups of episodes take turns: while the judge answers one group's round, this
        process computes the other's next actions, so both processes work at once. (With one
        group, `self.groups`, every round holds all the episodes waiting: half the rounds.)"""
        self.token = unit.get("k")  # the batch's token: every frame of this batch carries it
        # Each group's next round: its rows (flat), JSON messages, trace events, branch lists.
        self.rows: list[list[int]] = [[], []]
        self.json: list[list[Any]] = [[], []]
        self.events: list[list[Any]] = [[], []]
        self.indices: list[list[np.ndarray]] = [[], []]
        self.masks: list[list[np.ndarray]] = [[], []]
        self.group: dict[int, int] = {}
        self.in_flight: deque[int] = deque()
        self.mirrors = Mirrors()
        self._start(unit, unit["start"], -1)
        for g in (0, 1):
            if self.rows[g] or (not self.in_flight and g == 1):
                self._send_round(g)
        while self.in_flight:
            g = self.in_flight.popleft()
            reply, arrays = read()
            self._on_reply(g, reply, arrays)
            self._start(unit, reply["start"], g)
            if reply["end"]:
                return
            if self.rows[g]:
                self._send_round(g)


_NO_INDICES = np.zeros(0, np.int32)
_NO_MASKS = np.zeros(0, bool)
_REAPED = pack_frame({"t": "reaped"})


def _preload(modules: Any) -> None:
    for mod in sorted(set(modules) | set(PRELOAD)):
        __import__(mod)
    import ctypes.util  # noqa: F401 (seal() looks libseccomp up with it where it is not loaded)

    import greenlet

    import autotts.sandbox.client
    import autotts.sandbox.lockdown
    import autotts.units  # noqa: F401

    _runner_type()
    # greenlet's state for this thread (its main greenlet), made here once: a batch that made
    # it (Scheduler: getcurrent()) wrote ~20 pages it shares copy-on-write with the zygote.
    greenlet.getcurrent()


def _load(req: dict[str, Any]) -> Any:
    """Everything that reads the file system, before lock-down: admission, the modules the
    candidate may import, compilation."""
    source, filename = req["source"], req["filename"]
    STATE.filename = filename
    STATE.source_lines = source.splitlines()
    STATE.sink = PrintSink(int(req["limits"].get("max_output_bytes", 64 * 1024)))
    # A source the evaluating process admitted (evaluation._plan: this very text, before any
    # sandbox process started) is not admitted again here (~3 ms of each sandbox's start).
    again = req.get("admit", True) and not req.get("admitted")
    verdict = admit(source, filename) if again else None
    if verdict is not None:
        raise Fatal(verdict)
    _preload(set(imported_modules(source)) & ALLOWED_IMPORTS)
    code, errors = compile_candidate(source, filename)
    if code is None:
        raise Fatal(Verdict("forbidden", errors[0] if errors else "does not compile"))
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    deny_objects()
    return code


def _candidate_class(code: Any, filename: str, unrestricted: bool = False) -> type:
    module = ModuleType(CANDIDATE_MODULE)
    g = module.__dict__
    if unrestricted:  # tests only: a candidate that already has arbitrary code execution
        import builtins

        g["__builtins__"] = builtins
    else:
        # Built by the zygote (_run) where there is one: each batch is a fork, so it gets its
        # own copy of the dict, as fresh as the zygote's. Building it here touched every
        # builtin object (~140 copy-on-write faults per batch).
        g["__builtins__"] = BUILTINS if BUILTINS is not None else candidate_builtins()
        g["__metaclass__"] = class_hook
    g["__name__"] = CANDIDATE_MODULE
    sys.modules[CANDIDATE_MODULE] = module  # dataclasses looks classes' modules up there
    ctx: dict[str, Any] = {"phase": "module"}
    try:
        exec(code, g)
    except BaseException as e:
        raise Fatal(_exception_verdict(e, ctx)) from None
    _check_violation(ctx)
    try:
        return find_controller_class(module, filename)
    except ControllerError as e:
        _check_violation(ctx)
        raise Fatal(Verdict("interface", str(e).replace(f"{filename}: ", ""))) from None
    except BaseException as e:
        raise Fatal(_exception_verdict(e, ctx)) from None


def _configs(cls: type, req: dict[str, Any], out: _Out) -> list[dict[str, Any]] | None:
    """Knobs for each β: schedule() is candidate code, so it runs here."""
    filename = req["filename"]
    spec = ControllerSpec(name=cls.NAME, path=filename, cls=cls)
    configs = []
    for beta in req["betas"]:
        ctx = {"phase": "schedule", "beta": beta}
        try:
            cfg = spec.config(beta, req["overrides"])
        except ConfigError as e:
            _check_violation(ctx)
            out.send({"t": "config_error", "message": _text(e)[:1000]})
            return None
        except ControllerError as e:
            _check_violation(ctx)
            raise Fatal(Verdict("interface", _text(e).replace(f"{filename}: ", "")[:1000],
                                context=ctx)) from None
        except BaseException as e:
            raise Fatal(_exception_verdict(e, ctx)) from None
        _check_violation(ctx)
        configs.append(cfg)
    return configs


def _configs_child(code: Any, req: dict[str, Any], out: _Out) -> None:
    """In a forked process: the candidate's module, its class, and its knobs for each β."""
    cls = _candidate_class(code, req["filename"], bool(req.get("unrestricted")))
    configs = _configs(cls, req, out)
    if configs is None:
        return
    plain = [{str(k): _plain(v) for k, v in c.items()} for c in configs]
    try:
        pack_frame({"configs": plain})
    except (TypeError, ValueError):
        raise Fatal(Verdict("interface", "schedule() returned knob values that are not finite "
                            "numbers, strings or booleans")) from None
    out.send({"t": "configs", "name": _plain(cls.NAME) if isinstance(cls.NAME, str) else "?",
              "configs": plain})


def _unit_child(code: Any, req: dict[str, Any], unit: dict[str, Any], out: _Out,
                hint: np.ndarray, stdin: Any) -> None:
    """In a forked process: one batch of episodes (one draw, one β, each question once), with
    a fresh copy of the candidate's module, so nothing it learns outlives the batch."""
    cls = _candidate_class(code, req["filename"], bool(req.get("unrestricted")))
    sched = Scheduler(cls, unit["config"], req, out, hint)
    sched.run_unit(unit, lambda: read_frame(stdin))
    out.send({"t": "unit_done", "stdout": STATE.sink.text(), "dropped": STATE.sink.dropped,
              "k": unit.get("k")})


def _forked(work: Any, out: _Out, hint: np.ndarray) -> None:
    """Run `work` (candidate code) in a child of this process and wait for it. This process
    never runs candidate code itself, so every batch starts from the same clean state."""
    from autotts.sandbox.lockdown import end_leftovers, seal

    pid = os.fork()
    if pid == 0:
        try:
            seal()
            work()
        except Fatal as f:
            _send_verdict(out, f.verdict)
        except MemoryError:
            _send_verdict(out, Verdict("memory", "memory limit exceeded (MemoryError)"))
        except BaseException as e:  # a bug of the sandbox itself, or a broken pipe
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()[:1000]
            _send_verdict(out, Verdict("crash", f"sandbox error: {msg}"))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if INHERITED:  # no seccomp filter: the batch may have forked (as root), and left orphans
        end_leftovers()
    # The next batch starts with nothing the last one wrote: the whole shared page, and the
    # flags of the open file descriptions it shared (O_APPEND, O_ASYNC ... are bits it could set).
    hint.fill(0)
    hint[0] = -1
    for fd, flags in FD_FLAGS.items():
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    if INHERITED:
        _restore_inherited()
    if os.WIFSIGNALED(status):
        out.send({"t": "died", "status": -os.WTERMSIG(status)})
    elif os.WEXITSTATUS(status) != 0:
        out.send({"t": "died", "status": os.WEXITSTATUS(status)})
    else:  # when to look: the supervisor checks /proc once, instead of polling it
        # A constant frame, packed once: each page the zygote touches between two forks is a
        # copy-on-write fault (packing it here touched ~70).
        view = memoryview(_REAPED)
        while view:
            view = view[os.write(out.fd, view):]


def _snapshot_inherited(fds: tuple[int, ...]) -> dict[str, Any]:
    """This process's nice value, rlimits and the fcntl registers of its shared descriptors,
    before any candidate code. Without seccomp a batch may set each of them (setpriority and
    prlimit on its parent, a process of the same user; fcntl on a description it shares): a
    register the next batch would read when it starts."""
    import resource

    regs = {}
    for fd in fds:
        for get, put in _FCNTL_REGISTERS:
            with contextlib.suppress(OSError):  # F_GETPIPE_SZ of what is not a pipe
                regs[fd, get, put] = fcntl.fcntl(fd, get)
    limits = {r: resource.getrlimit(r) for r in sorted(
        {getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")})}
    inodes = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            inodes[fd] = (st.st_gid, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0), "rlimits": limits, "fcntl": regs,
            "sched": _scheduling(), "inodes": inodes}


# ioprio_get / ioprio_set (no Python wrapper): their numbers where they are known
_IOPRIO_CALLS = {"x86_64": (252, 251), "aarch64": (31, 30), "riscv64": (31, 30),
                 "loongarch64": (31, 30), "i686": (290, 289), "ppc64le": (274, 273),
                 "s390x": (283, 282)}
_IOPRIO_WHO_PROCESS = 1


_SYSCALL: list[Any] = []  # libc's syscall(), made once


def _ioprio(value: int | None = None) -> int | None:
    """This process's I/O priority (or set it to `value`); None where the call is unknown."""
    import ctypes

    calls = _IOPRIO_CALLS.get(os.uname().machine)
    if calls is None:
        return None
    if not _SYSCALL:
        _SYSCALL.append(ctypes.CDLL(None, use_errno=True).syscall)
        _SYSCALL[0].restype = ctypes.c_long
    syscall = _SYSCALL[0]
    if value is None:
        r = syscall(ctypes.c_long(calls[0]), ctypes.c_long(_IOPRIO_WHO_PROCESS), ctypes.c_long(0))
    else:
        r = syscall(ctypes.c_long(calls[1]), ctypes.c_long(_IOPRIO_WHO_PROCESS), ctypes.c_long(0),
                    ctypes.c_long(value))
    if r < 0:
        raise OSError(ctypes.get_errno(), "ioprio")
    return int(r)


def _scheduling() -> dict[str, Any]:
    """The scheduling state a process of the same user may set on this one and a fork
    inherits (or a batch reads from its parent): CPU affinity, scheduling policy (with its
    reset-on-fork flag) and priority, I/O priority. (The nice value is read apart.)"""
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError, AttributeError):
        out["affinity"] = os.sched_getaffinity(0)
    with contextlib.suppress(OSError, AttributeError):
        out["policy"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    with contextlib.suppress(OSError):
        out["ioprio"] = _ioprio()
    return out


def _restore_inherited() -> None:
    """After a batch: every register of INHERITED back to its value before candidate code.
    One that cannot be put back (a hard limit lowered, a nice value raised without the
    privilege to lower it, a pipe grown past what it now holds) ends the run: an honest
    controller cannot reach any of them, and the next batch must not read what this one left."""
    import resource

    moved = []
    for (fd, get, put), v in INHERITED["fcntl"].items():
        try:
            if fcntl.fcntl(fd, get) != v:
                fcntl.fcntl(fd, put, v)
                if fcntl.fcntl(fd, get) != v:
                    moved.append(f"descriptor {fd}'s fcntl register {get}")
        except OSError:
            moved.append(f"descriptor {fd}'s fcntl register {get}")
    for r, v in INHERITED["rlimits"].items():
        try:
            if resource.getrlimit(r) != v:
                resource.setrlimit(r, v)
        except (OSError, ValueError):
            moved.append(f"resource limit {r}")
    nice = INHERITED["nice"]
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        moved.append("nice value")
    # CPU affinity, policy and I/O priority: set from outside as the nice value is (and a
    # policy's reset-on-fork flag, or SCHED_IDLE, cannot be taken back without privileges)
    sched, before = INHERITED.get("sched", {}), len(moved)
    try:
        if sched.get("affinity") is not None and os.sched_getaffinity(0) != sched["affinity"]:
            os.sched_setaffinity(0, sched["affinity"])
    except OSError:
        moved.append("CPU affinity")
    try:
        if sched.get("policy") is not None and (
                os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != sched["policy"]:
            policy, priority = sched["policy"]
            os.sched_setscheduler(0, policy, os.sched_param(priority))
    except OSError:
        moved.append("scheduling policy")
    try:
        if sched.get("ioprio") is not None and _ioprio() != sched["ioprio"]:
            _ioprio(sched["ioprio"])
    except OSError:
        moved.append("I/O priority")
    if len(moved) == before and _scheduling() != sched:  # a change that did not take
        moved.append("scheduling state")
    moved += _release_locks(FD_FLAGS)
    moved += _restore_inodes(INHERITED.get("inodes", {}))
    from autotts.sandbox.lockdown import session_keyring_moved

    if session_keyring_moved():  # KEYCTL_SESSION_TO_PARENT: every later batch would start in it
        moved.append("session keyring")
    if moved:
        raise Fatal(Verdict("crash", "a batch changed the sandbox process's state, which the "
                            f"next batch would inherit, beyond repair: {', '.join(moved)}"))


# struct flock (l_type, l_whence, l_start, l_len, l_pid): an unlock of the whole file
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def _flock_struct(kind: int) -> bytes:
    import struct

    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)


def _release_locks(fds: Any) -> list[str]:
    """Release every lock a batch left on a shared open file description: an open file
    description lock (F_OFD_SETLK) or a flock() belongs to the description, which this process
    holds, not to the batch, so it outlives the batch, and the next batch reads an OFD lock's
    range with F_GETLK (a 63-bit register per lock; tests/test_redteam_session11b.py). This
    process shares each description, so it may unlock them. The descriptors whose locks could
    not be released (F_GETLK still sees one)."""
    import struct

    left = []
    unlock, probe = _flock_struct(fcntl.F_UNLCK), _flock_struct(fcntl.F_WRLCK)
    for fd in fds:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_OFD_SETLK, unlock)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            seen = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0]
        except OSError:  # no locks on this kind of file
            continue
        if seen != fcntl.F_UNLCK:
            left.append(f"descriptor {fd}'s locks")
    return left


def _restore_inodes(inodes: dict[int, tuple[int, int, int, int]]) -> list[str]:
    """Put the shared pipes' group, mode bits and times back, after every batch: where the
    sandbox runs as the user who owns the evaluating process's pipes (an ordinary user; root
    without the drop to nobody), a batch may set each of them (fchown to a group of its own,
    fchmod, futimens to any time), and the next batch reads them with fstat
    (tests/test_redteam_session11b.py). Done whether or not they moved, so that the change
    time the calls set says nothing of the batch. The descriptors whose group or mode stay."""
    left = []
    for fd, (gid, mode, atime, mtime) in inodes.items():
        with contextlib.suppress(OSError):  # not the owner: the batch could not set them either
            os.chown(fd, -1, gid)
        with contextlib.suppress(OSError):
            os.chmod(fd, mode)
        with contextlib.suppress(OSError):
            os.utime(fd, ns=(atime, mtime))
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        # (Times are not compared: on kernels before about 6.8 the evaluating process's reads
        # and writes of the pipes set them at any moment.)
        if (st.st_gid, stat.S_IMODE(st.st_mode)) != (gid, mode):
            left.append(f"descriptor {fd}'s owner group or mode")
    return left


def _send_verdict(out: _Out, v: Verdict) -> None:
    try:
        v.context.setdefault("stdout", STATE.sink.text()[-2000:])
        out.send({"t": "verdict", "verdict": v.to_dict()})
    except BaseException:
        import os

        os._exit(3)


def _run(req: dict[str, Any], out: _Out, hint: np.ndarray) -> None:
    """The zygote: loads, locks down, reports its isolation, then forks one process for the
    knobs and one per batch of episodes."""
    from autotts.sandbox.lockdown import lockdown, prepare_seal

    unrestricted = bool(req.get("unrestricted"))
    if unrestricted:  # tests only
        STATE.filename = req["filename"]
        STATE.source_lines = req["source"].splitlines()
        code = compile(req["source"], req["filename"], "exec")
        _preload(())
    else:
        code = _load(req)
    import os

    for fd in (0, 1, 2, out.fd):  # as they are before any candidate code: restored after each
        with contextlib.suppress(OSError):
            FD_FLAGS[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)
    prepare_seal(req["limits"])  # while the file system is there: compiled once
    isolation = lockdown(req["limits"], os.getcwd())
    if not isolation.get("seccomp"):  # the filter refuses all of them to a batch (and to us)
        INHERITED.update(_snapshot_inherited((0, 1, 2, out.fd)))
    # The batches inherit every descriptor this process holds, and with it any state of the
    # open file (offset, times, flags) a batch could set for the next one: keep only the pipes.
    os.closerange(3, out.fd)
    os.closerange(out.fd + 1, 1 << 16)
    out.send({"t": "ready", "isolation": {k: v for k, v in isolation.items()
                                          if type(v) is bool}})
    stdin = sys.stdin.buffer.raw  # unbuffered: a forked batch reads the same descriptor
    # Nothing is forked before the judge has recorded this sandbox's own processes: a process
    # that ran candidate code must never count as one of them.
    header, _ = read_frame(stdin)
    if header.get("t") != "go":
        return
    global BUILTINS
    if not unrestricted:
        BUILTINS = candidate_builtins()
    import gc

    # Forked batches share this process's memory copy-on-write; a collection in a child would
    # touch (and copy) every page it scans.
    gc.collect()
    gc.freeze()
    _forked(lambda: _configs_child(code, req, out), out, hint)
    while True:
        header, _ = read_frame(stdin)
        if header.get("t") != "unit":
            break
        _forked(lambda h=header: _unit_child(code, req, h, out, hint, stdin), out, hint)
    out.send({"t": "done"})


def _map_hint(fd: int, size: int) -> np.ndarray:
    """The shared hint page, mapped with libc's mmap and its descriptor closed. (Python's
    mmap.mmap keeps a descriptor of its own: the batches would inherit it, and its file offset
    and access time, which a batch can set, would outlive the batch.)"""
    import ctypes
    import mmap
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap of the hint page failed")
    return np.frombuffer((ctypes.c_char * size).from_address(addr), dtype=np.int64)


def main(argv: list[str] | None = None) -> None:
    import gc
    import mmap
    import os

    # What the imports made (no garbage: a full collection here finds none) is left out of every
    # collection from now on: the zygote's collection before its first fork (_run) then walks
    # only what start-up made since (~4 ms less per sandbox process).
    gc.freeze()
    argv = list(sys.argv if argv is None else argv)
    out = _Out(int(argv[1]))
    hint = np.zeros(1, dtype=np.int64)
    with contextlib.suppress(OSError, ValueError, IndexError):
        hint = _map_hint(int(argv[2]), mmap.PAGESIZE)
    try:
        req, _ = read_frame(sys.stdin.buffer)
        _run(req, out, hint)
    except Fatal as f:
        v = f.verdict
        v.context.setdefault("stdout", STATE.sink.text()[-2000:])
        out.send({"t": "verdict", "verdict": v.to_dict()})
    except MemoryError:
        try:
            out.send({"t": "verdict", "verdict": Verdict(
                "memory", "memory limit exceeded (MemoryError)").to_dict()})
        except BaseException:
            os._exit(3)
    except BaseException as e:  # a bug of the sandbox itself, or a broken pipe
        try:
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()[:1000]
            out.send({"t": "verdict", "verdict": Verdict("crash", f"sandbox error: {msg}")
                      .to_dict()})
        except BaseException:
            os._exit(4)
    os._exit(0)


if __name__ == "__main__":
    main()
