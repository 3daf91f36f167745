"""One sandbox process and the trusted side that serves it: spawn, judge, watch, kill.

`run_task` starts one sandbox child for a list of work units and serves it until every unit is
done: it sends the init frame (no replay data), answers the child's rounds of actions through a
`UnitJudge` per unit, enforces the time limits with its own clock (the child keeps no account the
supervisor trusts), drains and caps what the child prints, and turns every failure into a typed
`Verdict` (raised as `Failed`). It runs wherever the trusted side of an evaluation runs: the
evaluating process, a local worker process, or a Ray worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import mmap
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import autotts
from autotts.sandbox.admission import Verdict
from autotts.sandbox.judge import OutputLimit, ProtocolError, TaskTables, TraceBudget, UnitJudge
from autotts.sandbox.wire import (
    ROUND_COLS,
    FrameError,
    FrameReader,
    FrameTooLarge,
    escape,
    pack_frame,
)
from autotts.store import ReplayData
from autotts.units import BlockResult, EvalProtocol, Questions, Unit, knob_key

MAX_NAME = 100  # characters of a controller NAME
MAX_KNOBS_JSON = 64 * 1024  # bytes of all knobs of all β, as JSON
MAX_PENDING = 8 << 20  # bytes of replies the child has not read yet
PENDING_HINT_SECONDS = 0.2  # how long the next batch waits for the "reaped" hint


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed evaluation. Times in seconds; memory_mb is the address space a
    sandbox process may add on top of its interpreter with numpy loaded."""

    wall_seconds: float = 1800.0  # the whole evaluation, all processes
    cpu_seconds: int = 1800  # CPU time of each sandbox process (RLIMIT_CPU)
    episode_seconds: float = 20.0  # one round of actions, schedule() call or module execution
    startup_seconds: float = 120.0  # the (trusted) start-up: interpreter, numpy, scipy
    memory_mb: int = 1024
    max_output_bytes: int = 64 * 1024  # printed output / stdout / stderr kept per process
    max_trace_items: int = 4_000_000  # JSON values + string characters of trace events kept
    max_result_bytes: int = 1024**3  # everything a process may send back
    window: int = 256  # episodes of a work unit live at once in one process


class Failed(Exception):
    """The candidate failed; `verdict` says how."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(str(verdict))
        self.verdict = verdict


class Cancelled(Exception):
    """The evaluation was called off before this task's first batch (a gated task: see
    `run_task`); its sandbox process is gone and nothing of it is kept."""


# ---- the child's environment -----------------------------------------------------------------


def scrubbed_env(home: str) -> dict[str, str]:
    """The sandbox process's whole environment: built from nothing, so no API key, token,
    secret, proxy or cloud credential of the parent can reach it."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        # numpy's BLAS must not start threads: the process may not create any.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        # pyarrow's allocator would start a thread; the sandbox process must have only one
        # when it enters its namespaces.
        "JE_ARROW_MALLOC_CONF": "background_thread:false",
    }
    if "LD_LIBRARY_PATH" in os.environ:  # some Python installs need it to start at all
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


_BOOT = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from autotts.sandbox.child import main; main(sys.argv)"
)

_SPAWNED: deque[int] = deque(maxlen=4096)


def spawned_pids() -> list[int]:
    """Process ids of the sandbox processes this process started (the latest 4096): all of them
    must be gone once evaluate_sandboxed has returned or raised."""
    return list(_SPAWNED)


def _scrub_paths(text: str) -> str:
    """Messages from the child never show where things are installed."""
    root = str(Path(autotts.__file__).resolve().parent.parent)
    for prefix, name in ((root, "<autotts>"), (sys.prefix, "<python>"),
                         (sys.base_prefix, "<python>"), (os.path.expanduser("~"), "~")):
        if prefix and len(prefix) > 1:
            text = text.replace(prefix, name)
    return text


def clean(text: Any, limit: int = 4000) -> str:
    """Text that came from the child, fit to print or to show an LLM."""
    return escape(_scrub_paths(str(text)), limit)


class _Child:
    """One sandbox process and the parent's view of it."""

    def __init__(self, limits: SandboxLimits) -> None:
        # The child's working directory: empty, private, removed afterwards (it is also the
        # child's whole file system once it has locked itself in).
        self.tmp = tempfile.mkdtemp(prefix="autotts-sandbox-")
        r, w = os.pipe()
        try:
            hfd = os.memfd_create("autotts-sandbox-hint")
        except (AttributeError, OSError):
            with tempfile.TemporaryFile() as f:
                hfd = os.dup(f.fileno())
        # A whole page: a mapping is one, and the sandbox process zeroes all of it after each
        # batch (bytes past a shorter file would still be shared, and outlive the batch).
        os.ftruncate(hfd, mmap.PAGESIZE)
        self.mm = mmap.mmap(hfd, mmap.PAGESIZE)
        self.hint = np.frombuffer(self.mm, dtype=np.int64)
        self.hint[0] = -1
        root = str(Path(autotts.__file__).resolve().parent.parent)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT.format(root=root), str(w), str(hfd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.tmp, env=scrubbed_env(self.tmp), start_new_session=True,
                pass_fds=(w, hfd), close_fds=True,
            )
        except BaseException:
            os.close(r)
            self.hint = np.zeros(1, dtype=np.int64)
            self.mm.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            os.close(w)
            os.close(hfd)
        self.pid = self.proc.pid
        _SPAWNED.append(self.pid)
        self.result_fd = r
        self.reader = FrameReader(limits.max_result_bytes)
        self.outbuf = bytearray()
        self.waiting_to_write = False  # stdin is registered with the selector
        self.last_frame = 0  # bytes of the last frame queued for stdin
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.cap = limits.max_output_bytes
        self.open_fds = 3
        self.foreign: Any = None  # lockdown.ForeignProcesses, from the sandbox's first scan

    def keep(self, buf: bytearray, data: bytes) -> None:
        room = self.cap - len(buf)
        if room > 0:
            buf += data[:room]

    def kill(self) -> None:
        # The group first, while the leader (even a zombie) still holds the group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.kill()

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        # Batches are forked by the sandbox process: once it is gone they are orphans, killed
        # with the group and reaped by init; wait (briefly) until none is left.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.01)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                if f is not None:
                    f.close()
        with contextlib.suppress(OSError):
            os.close(self.result_fd)
        if self.foreign is not None:
            self.foreign.close()
        self.hint = np.zeros(1, dtype=np.int64)
        with contextlib.suppress(Exception):
            self.mm.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _death_verdict(c: _Child, rc: int) -> Verdict:
    return _death_verdict_status(rc, clean(bytes(c.stderr[-2000:]).decode("utf-8", "replace"),
                                           2000))


def _death_verdict_status(rc: int, err: str) -> Verdict:
    """How a sandbox process ended: rc is its exit status, or minus the signal that killed it."""
    ctx = {"stderr": err} if err else {}
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return Verdict("timeout", "CPU time limit exceeded", context=ctx)
        if sig == signal.SIGKILL:
            return Verdict("memory", "the sandbox process was killed (out of memory)", context=ctx)
        try:
            name: object = signal.Signals(sig).name
        except ValueError:
            name = sig
        return Verdict("crash", f"the sandbox process died from signal {name}", context=ctx)
    if "MemoryError" in err:
        return Verdict("memory", "memory limit exceeded (MemoryError)", context=ctx)
    return Verdict("crash", f"the sandbox process exited with status {rc} without a result",
                   context=ctx)


_CONTEXT_KEYS = ("phase", "beta", "line", "stdout")


def _child_verdict(v: Any) -> Verdict:
    """A verdict the child sent about itself: its kind is believed (a failure is a failure),
    every text is cleaned and capped, and the context keeps plain values of known keys only."""
    if type(v) is not dict:
        raise ProtocolError("a verdict that is not an object")
    verdict = Verdict.from_dict(v)
    ctx = {}
    for k in _CONTEXT_KEYS:
        x = verdict.context.get(k)
        if type(x) in (int, float) or x is None:
            ctx[k] = x
        elif type(x) is str:
            ctx[k] = clean(x, 2000)
    slot = verdict.context.get("slot")
    if type(slot) is int:
        ctx["slot"] = slot
    return Verdict(verdict.kind, clean(verdict.message, 1000),
                   None if verdict.traceback is None else clean(verdict.traceback, 4000), ctx)


def _knobs(header: dict[str, Any], n_betas: int) -> tuple[str, list[dict[str, Any]]]:
    name, configs = header.get("name"), header.get("configs")
    if type(name) is not str or type(configs) is not list or len(configs) != n_betas:
        raise ProtocolError("malformed configs")
    if not name or len(name) > MAX_NAME:
        raise OutputLimit(f"the controller's NAME has {len(name)} characters (at most "
                          f"{MAX_NAME})")
    if any(type(c) is not dict for c in configs):
        raise ProtocolError("malformed configs")
    if len(json.dumps(configs)) > MAX_KNOBS_JSON:
        raise OutputLimit(f"the knobs of all β take more than {MAX_KNOBS_JSON} bytes")
    return escape(name, MAX_NAME, newlines=False), [_plain_knobs(c) for c in configs]


def _plain_knobs(config: dict[str, Any]) -> dict[str, Any]:
    """Knobs as they will be stored and printed: strings escaped (a knob value is the
    candidate's text), everything else as JSON gave it."""
    def clean_value(v: Any) -> Any:
        if type(v) is str:
            return escape(v, 1000, newlines=False)
        if type(v) is list:
            return [clean_value(x) for x in v]
        if type(v) is dict:
            return {escape(k, 100, newlines=False): clean_value(x) for k, x in v.items()}
        return v

    return {escape(k, 100, newlines=False): clean_value(v) for k, v in config.items()}


def _batches(units: list[Unit]) -> list[list[int]]:
    """Units (one draw each) grouped by (configuration, draw): one sandbox process per group,
    so that no process meets the same question twice (it could carry what it learned of a
    question's pool from one draw or β to the next)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (_, r, lo, hi) in enumerate(units):
        if hi != lo + 1:
            raise ValueError("sandbox units hold one draw each")
        groups.setdefault((r, lo), []).append(i)
    return list(groups.values())


class _Task:
    """The supervisor's state for one sandbox: which batch is being judged, what came back.

    States: boot (until the sandbox reports its isolation and the knobs), busy (a batch of
    episodes being judged), closing (the batch's process reports its printed output and exits),
    reaping (until that process is gone: no frame but the sandbox process's own is taken, and
    the next batch is not judged yet), stopping, done."""

    def __init__(self, request: dict[str, Any], datas: Sequence[ReplayData], units: list[Unit],
                 limits: SandboxLimits, budget: TraceBudget,
                 progress: Callable[[int, int], None] | None, gate: Any = None) -> None:
        self.request = request
        self.gate = gate  # until it opens: the first batch waits ("held"), no wall clock runs
        self.t0 = time.monotonic()  # the wall clock's fallback start: this task's, or the gate's
        self.cancelled = False
        self.questions = [Questions(d) for d in datas]
        self.units = units
        self.batches = _batches(units)
        self.limits = limits
        self.budget = budget
        self.progress = progress
        self.proto = EvalProtocol(**request["proto"])
        self.betas: list[float | None] = list(request["betas"])
        self.raise_first = request["on_error"] == "raise"
        order = list(range(len(self.batches)))
        if request.get("traces") and request.get("trace_draws") is not None:
            # Batches are forked in turn, so a batch's pid and start time tell its place in the
            # order: served in draw order, they would tell the first `trace_draws` draws (the
            # digest's) from the rest. A secret order keeps which draws are traced the judge's.
            random.SystemRandom().shuffle(order)
        self.todo = deque(order)
        self.results: dict[int, BlockResult] = {}
        self.alias: dict[int, int] = {}  # unit -> the unit with the same knobs whose results it takes
        self.info: dict[str, Any] = {"name": None, "configs": None, "isolation": None,
                                     "stdout": "", "stdout_dropped": 0, "actions": 0}
        self.judge: UnitJudge | None = None
        self.tables: TaskTables | None = None  # every question's step tables, for every batch
        self.batch: int | None = None
        self.state = "boot"
        self.round_sent = time.monotonic()
        self.since: dict[int, float] = {}  # live episode -> when it was last answered
        self.base: set[int] | None = None  # the sandbox's processes before any batch
        self.reaping_since = 0.0  # when the last batch (or the knobs) process reported done
        self.token: str | None = None  # what the current batch's frames carry

    def context(self, slot: int | None = None) -> dict[str, Any]:
        if self.batch is None:
            return {}
        s, r, _, _ = self.units[self.batches[self.batch][0]]
        ctx: dict[str, Any] = {"store": self.questions[s].data.name, "beta": self.betas[r],
                               "config": self.info["configs"][r] if self.info["configs"] else None}
        if slot is not None and self.judge is not None and 0 <= slot < self.judge.n:
            k, ctx["draw"], ctx["question"] = self.judge.where(slot)
            ctx["store"] = self.judge.parts[k].data.name
        return ctx

    def _skip_repeated_knobs(self, configs: list[dict[str, Any]]) -> None:
        """A β whose knobs equal an earlier β's is not run again: its units take the results of
        the earlier β's units (when this task has them), as in-process evaluation does.
        Equal means the same JSON, types included: with Python's ==, {"n": 1}, {"n": 1.0} and
        {"n": True} are one configuration, and a controller that tells them apart (isinstance)
        was scored at one β with another β's episodes, and by a mix of both where a task
        boundary fell inside a draw (tests/test_redteam_session11.py). The knobs are sorted by
        name, but a dict-valued knob's keys keep their order, which the controller can read
        (units.knob_key, which in-process evaluation uses too; tests/test_redteam_session11b.py)."""
        keys = [knob_key(c) for c in configs]
        first = [keys.index(k) for k in keys]
        where = {u: i for i, u in enumerate(self.units)}
        for b in list(self.todo):
            pairs = []
            for i in self.batches[b]:
                s, r, lo, hi = self.units[i]
                pairs.append((i, where.get((s, first[r], lo, hi)) if first[r] != r else None))
            if pairs and all(j is not None for _, j in pairs):
                self.todo.remove(b)
                self.alias.update(pairs)

    def next_batch(self) -> dict[str, Any]:
        if not self.todo:
            self.batch, self.judge, self.state = None, None, "stopping"
            return {"t": "stop"}
        b = self.todo.popleft()
        first = self.units[self.batches[b][0]]
        r, draw = first[1], first[2]
        self.batch, self.state = b, "busy"
        parts = [self.questions[self.units[i][0]] for i in self.batches[b]]
        limit = self.request.get("trace_draws")
        trace = bool(self.request["traces"]) and (limit is None or draw < limit)
        if self.tables is None:
            self.tables = TaskTables(self.questions)
        self.judge = UnitJudge(parts, self.proto, draw, trace=trace,
                               budget=self.budget, window=self.limits.window, tables=self.tables)
        start = self.judge.start()
        now = time.monotonic()
        self.since = {f[0]: now for f in start}
        p = self.proto
        # No trace flag: the child collects trace events in every batch of a traced evaluation
        # and the judge keeps only those of traced draws, so a candidate (even with code
        # execution) cannot tell the digest's traced draws from the scored ones.
        # A fresh token per batch, which the batch's frames must carry: a frame that the last
        # batch's process left in the pipe before it exited is not taken for this batch's.
        self.token = os.urandom(8).hex()
        return {"t": "unit", "r": r, "config": self.info["configs"][r],
                "kappa": int(p.probe_cost), "budget": p.budget, "start": start, "k": self.token}

    def on_frame(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()
                 ) -> dict[str, Any] | None:
        """The supervisor's answer to one frame of the child (None: nothing to send)."""
        kind = header.get("t")
        if kind == "verdict":
            v = _child_verdict(header.get("verdict"))
            slot = v.context.pop("slot", None)
            v.context.update(self.context(slot if type(slot) is int else None))
            raise Failed(v)
        if kind == "died":
            status = header.get("status")
            if type(status) is not int or not -256 < status < 256:
                raise ProtocolError("malformed died frame")
            v = _death_verdict_status(status, "")
            v.context.update(self.context())
            raise Failed(v)
        if kind == "ready" and self.state == "boot" and self.info["isolation"] is None:
            # Sent by the sandbox process before it ran any candidate code: what it reports
            # here is what the (trusted) lock-down applied, on whichever machine this runs.
            from autotts.sandbox.lockdown import describe, is_strong

            iso = header.get("isolation")
            self.info["isolation"] = {str(k)[:40]: bool(v) for k, v in iso.items()} \
                if type(iso) is dict else {}
            if not self.request.get("allow_weak") and not is_strong(self.info["isolation"]):
                raise Failed(Verdict("crash", "the sandbox process could not isolate itself "
                                     f"from the host here (applied: "
                                     f"{describe(self.info['isolation'])}); refusing to run "
                                     "candidate code (--allow-weak-sandbox to accept)"))
            return None
        if kind == "config_error" and self.state == "boot":
            message = clean(header.get("message", "bad configuration"), 1000)
            if not self.request.get("overrides"):
                # Nothing of the user's to blame (no --set knobs): the candidate's schedule() or
                # signature is wrong, or its process forged the frame.
                raise Failed(Verdict("interface", message))
            from autotts.errors import ConfigError

            raise ConfigError(message)
        if kind == "configs" and self.state == "boot" and self.info["isolation"] is not None:
            name, configs = _knobs(header, len(self.betas))
            self.info.update(name=name, configs=configs)
            self._skip_repeated_knobs(configs)
            return self._reap()
        if kind in ("round", "unit_done") and header.get("k") != self.token:
            raise ProtocolError(f"a {kind} frame that is not the current batch's")
        if kind == "round" and self.state == "busy" and self.judge is not None:
            return self.on_round(header, arrays)
        if kind == "unit_done" and self.state == "closing":
            self._printed(header)
            return self._reap()
        if kind == "done" and self.state == "stopping":
            self.state = "done"
            return None
        raise ProtocolError(f"unexpected frame {clean(kind, 40)!r} in state {self.state}")

    def open_gate(self, deadline: float | None) -> None:
        """The gate's record: the evaluation goes on under `deadline` (its wall clock starts
        now, as an ungated task's starts when it is called), or it was called off (None)."""
        self.gate = None
        if deadline is None:
            self.cancelled = True
            self.todo.clear()  # held: the sandbox process is told to stop, and exits cleanly
            if self.state != "held":
                raise Cancelled()
        else:
            self.request["deadline"] = deadline
            self.t0 = time.monotonic()
        if self.state == "held":
            self.state = "reaping"

    def _reap(self) -> None:
        """The process that ran candidate code says it is done: nothing more is judged (not even
        the next batch's episodes, whose frame it could otherwise answer itself) until it is
        gone (_release)."""
        self.state, self.reaping_since = "reaping", time.monotonic()

    def _printed(self, header: dict[str, Any]) -> None:
        out, dropped = header.get("stdout"), header.get("dropped")
        if type(out) is not str or type(dropped) is not int or not 0 <= dropped < 2**53:
            raise ProtocolError("malformed unit_done frame")
        room = max(0, self.limits.max_output_bytes - len(self.info["stdout"]))
        self.info["stdout"] += out[:room]
        self.info["stdout_dropped"] += dropped + max(0, len(out) - room)

    def on_round(self, header: dict[str, Any], arrays: Sequence[np.ndarray]) -> dict[str, Any]:
        """A round (wire.py: rows, indices, masks; JSON messages and trace events): the judge's
        reply, with the episodes it starts."""
        judge = self.judge
        assert judge is not None
        if (len(arrays) != 3 or arrays[0].dtype != np.int64 or arrays[0].ndim != 2
                or arrays[0].shape[1] != ROUND_COLS
                or arrays[1].dtype != np.int32 or arrays[1].ndim != 1
                or arrays[2].dtype != np.bool_ or arrays[2].ndim != 1):
            raise ProtocolError("a round is not its rows (int64), branch indices (int32) and "
                                "masks (bool)")
        served = judge.serve(arrays[0], header.get("m", []), header.get("e", []),
                             stop_on_error=self.raise_first, indices=arrays[1], masks=arrays[2])
        now = time.monotonic()
        since = self.since
        since.update(dict.fromkeys(served.answered, now))  # (in order, as a loop would)
        for slot in served.ended:
            since.pop(slot, None)
        out = [served.rows, *served.reveals]
        start = judge.start()
        for f in start:
            self.since[f[0]] = now
        if not judge.complete:
            return {"t": "reply", "x": served.refusals, "start": start, "end": False,
                    "arrays": out}
        self.info["actions"] += judge.actions
        first = judge.first_error() if self.raise_first else None
        if first is not None:
            rec, tb = first
            raise Failed(Verdict(rec["kind"], rec["message"], tb, {
                **self.context(), "store": rec["store"], "question": rec["question"],
                "draw": rec["draw"], "step": rec["step"]}))
        assert self.batch is not None
        for k, i in enumerate(self.batches[self.batch]):
            self.results[i] = judge.result(k)
        if self.progress:
            self.progress(len(self.results), len(self.units))
        self.state, self.judge, self.since = "closing", None, {}
        return {"t": "reply", "x": served.refusals, "start": [], "end": True, "arrays": out}

    def timeout(self, c: _Child, now: float) -> Verdict | None:
        lim = self.limits
        if self.state == "boot":
            allowed = lim.startup_seconds + lim.episode_seconds * (1 + len(self.betas))
            if now - self.round_sent > allowed:
                return Verdict("timeout", "the sandbox did not load the controller and compute "
                               f"its knobs within {allowed:g} s")
        elif self.state == "busy" and self.since and (
                now - min(self.since.values()) > lim.episode_seconds):
            # The judge's own clock: an episode waited on the sandbox for too long. Which one
            # the sandbox was running is its hint (only used to name it).
            slot = int(c.hint[0])
            judge = self.judge
            if judge is None or slot not in judge.live:
                slot = min(self.since, key=self.since.__getitem__)
            return Verdict("timeout", f"one round of episode actions took longer than "
                           f"{lim.episode_seconds:g} s", context=self.context(
                               slot if slot >= 0 else None))
        elif self.state in ("closing", "reaping", "stopping") and (
                now - self.round_sent > lim.episode_seconds + lim.startup_seconds / 10):
            return Verdict("timeout", "the sandbox did not finish a batch of episodes")
        return None


def _send(c: _Child, sel: selectors.BaseSelector, header: dict[str, Any]) -> None:
    arrays = header.pop("arrays", ())
    frame = pack_frame(header, arrays)
    # A child that sends without reading its replies: the cap is on what it left unread before
    # this frame beyond the last one (the other group's reply, which a batch reads only after
    # this round's). A reply's own size is the judge's (the round's reveals): one that reads
    # every branch of a batch of many stores takes more than the cap.
    unread = len(c.outbuf) - c.last_frame
    c.outbuf += frame
    c.last_frame = len(frame)
    if unread > MAX_PENDING:
        raise ProtocolError(f"more than {MAX_PENDING} bytes of replies left unread")
    # The usual case: the pipe (1 MiB) has room for the whole reply now, so it goes without a
    # trip through the selector (two epoll_ctl calls and a wake-up per round).
    _write_stdin(c, sel)
    if c.outbuf and not c.waiting_to_write:
        with contextlib.suppress(KeyError, ValueError):
            sel.register(c.proc.stdin, selectors.EVENT_WRITE, "stdin")
            c.waiting_to_write = True


def _write_stdin(c: _Child, sel: selectors.BaseSelector) -> None:
    """Write what the child's stdin takes now (non-blocking); a child that closed it gets
    nothing more."""
    try:
        n = os.write(c.proc.stdin.fileno(), c.outbuf[: 1 << 20])
    except BlockingIOError:
        return
    except (OSError, ValueError):
        c.outbuf.clear()
        n = 0
    del c.outbuf[:n]
    if not c.outbuf and c.waiting_to_write:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.proc.stdin)
        c.waiting_to_write = False


def _pump(c: _Child, sel: selectors.BaseSelector, task: _Task) -> None:
    """The event loop: until the child is done and gone."""
    lim = task.limits
    while True:
        now = time.monotonic()
        # The evaluation's deadline (wall clock, so that it holds across Ray workers), and this
        # task's own start as a fallback; a gated task's clock starts when its gate opens.
        if task.gate is None and (now - task.t0 > lim.wall_seconds
                                  or time.time() > task.request.get("deadline", math.inf)):
            raise Failed(Verdict("timeout", f"wall-clock limit of {lim.wall_seconds:g} s "
                                 "exceeded", context=task.context()))
        v = task.timeout(c, now)
        if v is not None:
            raise Failed(v)
        if task.state == "reaping" and now - task.reaping_since > PENDING_HINT_SECONDS:
            with _verdicts(task):  # no hint came: look (and wait) as without one
                _release(c, sel, task)
        for key, _ in sel.select(timeout=0.05):
            what = key.data
            if what == "stdin":
                _write_stdin(c, sel)
                continue
            if what == "gate":
                sel.unregister(key.fileobj)
                task.open_gate(task.gate.take())
                _release(c, sel, task)  # a held task's first batch (or its stop) goes now
                continue
            try:
                data = os.read(key.fd, 1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                c.open_fds -= 1
                continue
            if what == "stdout":
                c.keep(c.stdout, data)
            elif what == "stderr":
                c.keep(c.stderr, data)
            else:
                _on_result(c, sel, task, data)
        if c.open_fds <= 0 and c.proc.poll() is not None:
            if task.state != "done":
                raise Failed(_death_verdict(c, c.proc.returncode))
            return


def _release(c: _Child, sel: selectors.BaseSelector, task: _Task) -> None:
    """Once the process that ran candidate code is gone (from /proc), and nothing it wrote is
    left half read, judge the next batch."""
    if task.state != "reaping":
        return
    _await_batch_exit(c, task)
    _drain(c, task)
    if task.gate is not None:  # the sandbox is ready and waits for its first batch
        task.state = "held"
        return
    _send(c, sel, task.next_batch())
    task.round_sent = time.monotonic()


def _drain(c: _Child, task: _Task) -> None:
    """What is in the result pipe now was written before the gone process exited (or is the
    sandbox process's own small frames): read it all. A frame of it other than "reaped" is a
    verdict or a death (raised by on_frame), else a protocol error; a frame left unfinished
    could be completed by the next batch's process, so it is one too."""
    while True:
        try:
            data = os.read(c.result_fd, 1 << 20)
        except OSError:  # BlockingIOError: nothing more now
            break
        if not data:
            break
        for header, arrays in c.reader.feed(data):
            if header.get("t") != "reaped":
                task.on_frame(header, arrays)  # in state "reaping" this raises
    if c.reader.pending:
        raise ProtocolError("a frame left unfinished by a batch's process")


def _await_batch_exit(c: _Child, task: _Task) -> None:
    """Before the next batch's frame: the last batch's process is gone. Otherwise one that
    took over its own process (code execution) could read the next batch's frame itself and
    play it with what it remembers of the last. Judged from /proc, not from anything the
    sandbox says: every live process of the sandbox (its group and its first process's
    descendants) must be one that existed when it reported ready (before any candidate code:
    it forks nothing before "go")."""
    from autotts.sandbox.lockdown import live_sandbox_processes

    if task.base is None:
        task.base = set(live_sandbox_processes(c.pid))
    deadline = time.monotonic() + task.limits.episode_seconds
    while not set(live_sandbox_processes(c.pid, c.foreign)) <= task.base:
        if time.monotonic() > deadline:
            raise Failed(Verdict("timeout", "a batch's sandbox process did not exit after its "
                                 "last episode", context=task.context()))
        time.sleep(0.001)


_BROKEN = (FrameError, ProtocolError, OutputLimit)  # what _failure turns into a verdict


def _failure(task: _Task, e: Exception) -> Failed:
    """The sandbox's broken frame, protocol or output limit `e` (one of _BROKEN) as the
    candidate's verdict."""
    if isinstance(e, FrameTooLarge):
        return Failed(Verdict("output_limit", clean(e, 300), context=task.context()))
    if isinstance(e, FrameError | ProtocolError):
        return Failed(Verdict("crash", f"the sandbox broke the wire protocol: {clean(e, 300)}",
                              context=task.context()))
    return Failed(Verdict("output_limit", clean(e, 300), context=task.context()))


@contextlib.contextmanager
def _verdicts(task: _Task) -> Any:
    """The sandbox's broken frames, protocol and output limits as the candidate's verdicts."""
    try:
        yield
    except _BROKEN as e:
        raise _failure(task, e) from None


def _on_result(c: _Child, sel: selectors.BaseSelector, task: _Task, data: bytes) -> None:
    # _verdicts' translation without its context manager (a generator per read of a round).
    try:
        frames = c.reader.feed(data)
        for header, arrays in frames:
            if header.get("t") == "reaped":
                # The sandbox process says the last batch's process has exited: a hint of when
                # to look (one scan of /proc instead of a polling loop), never trusted as such.
                _release(c, sel, task)
                continue
            answer = task.on_frame(header, arrays)
            if header.get("t") == "ready":  # the sandbox forks nothing before "go"
                from autotts.sandbox.lockdown import ForeignProcesses, live_sandbox_processes

                # Before any candidate code: what this scan does not count is foreign for
                # good, and later scans skip it while it lives (lockdown.ForeignProcesses).
                c.foreign = ForeignProcesses()
                task.base = set(live_sandbox_processes(c.pid, c.foreign, learn=True))
                _send(c, sel, {"t": "go"})
            if answer is not None:
                _send(c, sel, answer)
                task.round_sent = time.monotonic()
    except _BROKEN as e:
        raise _failure(task, e) from None


def run_task(request: dict[str, Any], datas: Sequence[ReplayData], units: list[Unit],
             limits: SandboxLimits, *, trace_items: int | None = None,
             progress: Callable[[int, int], None] | None = None, gate: Any = None,
             ) -> tuple[dict[int, BlockResult], dict[str, Any]]:
    """Judge `units` (store indices into `datas`) with one sandbox process. Returns the units'
    results and what the sandbox reported (name, knobs, isolation, printed output, pid);
    raises Failed with the candidate's verdict.

    `gate` (evaluation._Gate: `fileno()`, and `take()`, the wall-clock deadline or None) lets
    the sandbox process start before the evaluation may go on: it loads, locks down and
    computes the knobs, then waits for the gate before its first batch, without the
    evaluation's wall clock. A deadline: the batches run under it, as if the task had been
    called then. None: the sandbox process is told to stop (or, still starting, killed), and
    Cancelled is raised once it is gone and cleaned up."""
    budget = TraceBudget(limits.max_trace_items if trace_items is None else trace_items)
    task = _Task(request, datas, units, limits, budget, progress, gate)
    sel = selectors.DefaultSelector()
    c = _Child(limits)
    try:
        for f in (c.proc.stdout, c.proc.stderr, c.proc.stdin):
            os.set_blocking(f.fileno(), False)
        for fd in (c.proc.stdin.fileno(), c.result_fd):  # a round in one write, not sixteen
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(c.result_fd, False)
        sel.register(c.proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(c.proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(c.result_fd, selectors.EVENT_READ, "result")
        if gate is not None:
            sel.register(gate.fileno(), selectors.EVENT_READ, "gate")
        # (The deadline is the judge's: the sandbox process is not told it.)
        _send(c, sel, {"t": "init", **{k: v for k, v in request.items() if k != "deadline"}})
        task.round_sent = time.monotonic()
        _pump(c, sel, task)
    finally:
        c.close()
        sel.close()
    if task.cancelled:
        raise Cancelled()
    for i, j in task.alias.items():
        task.results[i] = task.results[j]
    info = task.info
    info["isolation"] = info["isolation"] or {}
    info["pids"] = [c.pid]
    info["stderr"] = clean(bytes(c.stderr + c.stdout).decode("utf-8", "replace"),
                           2 * limits.max_output_bytes)
    info["stdout"] = clean(info["stdout"], limits.max_output_bytes)
    return task.results, info
