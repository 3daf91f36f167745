"""Sandboxed evaluation of untrusted controllers (DESIGN §7, issue 5).

    verdict = admit(source, filename)             # static: syntax, imports, names, contract
    ev = evaluate_sandboxed(source_or_path, stores, betas, proto, limits=SandboxLimits(...))
    verdict = monotonicity(ev.rows)               # measured: cost must grow with β

`evaluate_sandboxed` returns the same `Evaluation` (rows, episodes, traces, errors) as
`autotts.evaluate.evaluate`, with the same numbers. The controller runs in separate processes
(autotts.sandbox_child) that get its source, the β grid, the protocol and the gold-free replay
arrays of each store, never a store path and never a gold answer; they send back per episode the
answer class, tokens, probes, branches opened and (optionally) the trace. Scoring against the gold
classes happens here, in the parent. Any failure raises `SandboxError` carrying a typed `Verdict`.

Each child runs in its own session (process group), with a scrubbed environment, an empty
temporary working directory, rlimits, no network namespace where the platform permits, and a
wall-clock and per-episode watchdog here that kills the whole group.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

import autotts
from autotts import controller as ctl
from autotts.admission import VERDICT_KINDS, Verdict, admit
from autotts.errors import AutoTTSError, ConfigError
from autotts.evaluate import BlockResult, Evaluation, Protocol, make_units, score
from autotts.sandbox_child import (
    PH_BOOT,
    PH_MODULE,
    PH_SCHEDULE,
    PH_UNIT,
    PROGRESS_SLOTS,
    FrameError,
    FrameReader,
    pack_frame,
)
from autotts.store import ReplayData, Store, open_store

__all__ = [
    "VERDICT_KINDS",
    "SandboxError",
    "SandboxEvaluation",
    "SandboxLimits",
    "Verdict",
    "admit",
    "evaluate_sandboxed",
    "monotonicity",
    "sandbox_overhead",
    "scrubbed_env",
    "spawned_pids",
]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed evaluation. Times in seconds; memory_mb is the address space a
    sandbox process may add on top of its interpreter with numpy loaded."""

    wall_seconds: float = 1800.0  # the whole evaluation, all processes
    cpu_seconds: int = 1800  # CPU time of each sandbox process (RLIMIT_CPU)
    episode_seconds: float = 20.0  # one episode, schedule() call or module execution
    startup_seconds: float = 120.0  # the (trusted) start-up: interpreter, numpy, scipy
    memory_mb: int = 1024
    max_output_bytes: int = 64 * 1024  # captured print() / stdout / stderr kept per process
    max_trace_bytes: int = 256 * 1024 * 1024  # serialized traces kept per process
    max_result_bytes: int = 1024**3  # everything a process may send back


class SandboxError(AutoTTSError):
    """A candidate failed in (or before) the sandbox; `verdict` says how."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"sandbox: {verdict}")
        self.verdict = verdict


@dataclass
class SandboxEvaluation(Evaluation):
    """An `Evaluation` plus what the sandbox saw: the candidate's printed output (truncated),
    the processes' stderr (truncated), whether traces were cut at the size cap, the wall time and
    the sandbox process ids (all gone by the time this is returned), and which OS-level
    isolation the platform allowed (netns: no network; chroot: no file system; nobody: an
    unprivileged user, so that the no-new-processes limit holds). The import rules and guards
    hold either way."""

    stdout: str = ""
    stderr: str = ""
    traces_truncated: bool = False
    wall_seconds: float = 0.0
    pids: tuple[int, ...] = ()
    isolation: dict[str, bool] = field(default_factory=dict)


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
    }
    if "LD_LIBRARY_PATH" in os.environ:  # some Python installs need it to start at all
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


_BOOT = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from autotts.sandbox_child import main; main(sys.argv)"
)


def _memfd(size: int) -> int:
    try:
        fd = os.memfd_create("autotts-sandbox-progress")
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


_SPAWNED: deque[int] = deque(maxlen=4096)


def spawned_pids() -> list[int]:
    """Process ids of the sandbox processes this process started (the latest 4096): all of them
    must be gone once evaluate_sandboxed has returned or raised."""
    return list(_SPAWNED)


class _Child:
    """One sandbox process and the parent's view of it."""

    def __init__(self, request: bytes, limits: SandboxLimits) -> None:
        # The child's working directory: empty, private, removed afterwards (it is also the
        # child's whole file system once it has chrooted into it).
        self.tmp = tempfile.mkdtemp(prefix="autotts-sandbox-")
        r, w = os.pipe()
        pfd = _memfd(PROGRESS_SLOTS * 8)
        self.mm = mmap.mmap(pfd, PROGRESS_SLOTS * 8)
        self.progress = np.frombuffer(self.mm, dtype=np.int64)
        root = str(Path(autotts.__file__).resolve().parent.parent)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT.format(root=root), str(w), str(pfd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.tmp, env=scrubbed_env(self.tmp), start_new_session=True,
                pass_fds=(w, pfd), close_fds=True,
            )
        except BaseException:
            os.close(r)
            self.progress = np.zeros(PROGRESS_SLOTS, dtype=np.int64)
            self.mm.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            os.close(w)
            os.close(pfd)
        self.pid = self.proc.pid
        _SPAWNED.append(self.pid)
        self.result_fd = r
        self.reader = FrameReader(limits.max_result_bytes)
        self.outbuf = bytearray(request)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.cap = limits.max_output_bytes
        self.open_fds = 3
        self.started = time.monotonic()
        self.beat = (-1, -1)
        self.beat_time = self.started
        self.state = "boot"  # boot -> idle <-> busy -> stopping -> done
        self.unit: int | None = None
        self.printed = ""
        self.printed_dropped = 0
        self.traces_truncated = False

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
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                if f is not None:
                    f.close()
        with contextlib.suppress(OSError):
            os.close(self.result_fd)
        self.progress = np.zeros(PROGRESS_SLOTS, dtype=np.int64)
        with contextlib.suppress(Exception):
            self.mm.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- running the children --------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(str(verdict))
        self.verdict = verdict


def _stderr_tail(c: _Child) -> str:
    return bytes(c.stderr[-2000:]).decode("utf-8", "replace")


def _death_verdict(c: _Child, rc: int) -> Verdict:
    err = _stderr_tail(c)
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


def _timeout_context(c: _Child, units: list[tuple[int, int, int, int]], names: list[str],
                     betas: list[float | None], nqs: list[int]) -> dict[str, Any]:
    phase = int(c.progress[0])
    if phase == PH_MODULE:
        return {"phase": "module"}
    if phase == PH_SCHEDULE:
        r = int(c.progress[1])
        return {"phase": "schedule", "beta": betas[r] if 0 <= r < len(betas) else None}
    if phase == PH_UNIT and c.unit is not None:
        s, r, lo, _ = units[c.unit]
        k = max(0, int(c.progress[2]) - 1)
        return {"store": names[s], "beta": betas[r], "draw": lo + k // nqs[s],
                "question": k % nqs[s]}
    return {}


def _run_children(
    request: bytes,
    units: list[tuple[int, int, int, int]],
    names: list[str],
    betas: list[float | None],
    nqs: list[int],
    limits: SandboxLimits,
    n_children: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[int, tuple[dict[str, Any], list[np.ndarray]]], dict[str, Any]]:
    children: list[_Child] = []
    results: dict[int, tuple[dict[str, Any], list[np.ndarray]]] = {}
    info: dict[str, Any] = {"name": None, "configs": None, "pids": []}
    todo = deque(range(len(units)))
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()

    def dispatch(c: _Child) -> None:
        if todo:
            i = todo.popleft()
            s, r, lo, hi = units[i]
            c.unit, c.state = i, "busy"
            line = json.dumps({"unit": i, "s": s, "r": r, "lo": lo, "hi": hi}) + "\n"
            c.outbuf += line.encode()
        else:
            c.unit, c.state = None, "stopping"
            c.outbuf += b"stop\n"
        with contextlib.suppress(KeyError, ValueError):
            sel.modify(c.proc.stdin, selectors.EVENT_WRITE, (c, "stdin"))
        with contextlib.suppress(KeyError, ValueError):
            sel.register(c.proc.stdin, selectors.EVENT_WRITE, (c, "stdin"))

    def on_frame(c: _Child, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        kind = header.get("type")
        if kind == "verdict":
            v = header.get("verdict")
            raise _Failed(Verdict.from_dict(v if isinstance(v, dict) else {}))
        if kind == "config_error":
            raise ConfigError(str(header.get("message", "bad configuration"))[:1000])
        if kind == "configs":
            configs = header.get("configs")
            if not isinstance(configs, list) or len(configs) != len(betas):
                raise _Failed(Verdict("crash", "malformed configs from the sandbox"))
            if info["configs"] is None:
                info["configs"], info["name"] = configs, str(header.get("name"))
                iso = header.get("isolation")
                info["isolation"] = {str(k): bool(v) for k, v in iso.items()} \
                    if isinstance(iso, dict) else {}
            elif info["configs"] != configs:
                raise _Failed(Verdict("interface", "schedule() is not deterministic: sandbox "
                                      "processes computed different knobs for the same β"))
            if c.state == "boot":
                dispatch(c)
            return
        if kind == "unit":
            i = header.get("unit")
            if c.state != "busy" or i != c.unit or len(arrays) != 5:
                raise _Failed(Verdict("crash", "unexpected result frame from the sandbox"))
            s, _, lo, hi = units[i]
            for a in arrays[:4]:
                if a.shape != (hi - lo, nqs[s]):
                    raise _Failed(Verdict("crash", "result arrays of the wrong shape"))
            errs = header.get("errors")
            if not isinstance(errs, list) or not all(isinstance(e, dict) for e in errs):
                raise _Failed(Verdict("crash", "malformed error records from the sandbox"))
            results[i] = (header, arrays)
            if progress:
                progress(len(results), len(units))
            dispatch(c)
            return
        if kind == "done":
            c.state = "done"
            c.printed = str(header.get("stdout", ""))[: limits.max_output_bytes]
            c.printed_dropped = int(header.get("stdout_dropped", 0) or 0)
            c.traces_truncated = bool(header.get("traces_truncated", False))
            return
        raise _Failed(Verdict("crash", f"unknown frame {kind!r:.40} from the sandbox"))

    try:
        for _ in range(n_children):
            c = _Child(request, limits)
            children.append(c)
            info["pids"].append(c.pid)
            for f in (c.proc.stdout, c.proc.stderr):
                os.set_blocking(f.fileno(), False)
            os.set_blocking(c.proc.stdin.fileno(), False)
            os.set_blocking(c.result_fd, False)
            sel.register(c.proc.stdout, selectors.EVENT_READ, (c, "stdout"))
            sel.register(c.proc.stderr, selectors.EVENT_READ, (c, "stderr"))
            sel.register(c.result_fd, selectors.EVENT_READ, (c, "result"))
            sel.register(c.proc.stdin, selectors.EVENT_WRITE, (c, "stdin"))
        live = set(children)
        while live:
            now = time.monotonic()
            if now - t0 > limits.wall_seconds:
                c0 = next(iter(live))
                raise _Failed(Verdict("timeout", f"wall-clock limit of {limits.wall_seconds:g} s "
                                      "exceeded", context=_timeout_context(
                                          c0, units, names, betas, nqs)))
            for c in live:
                beat = (int(c.progress[0]), int(c.progress[3]))
                if beat != c.beat:
                    c.beat, c.beat_time = beat, now
                phase = beat[0]
                if phase == PH_BOOT and now - c.started > limits.startup_seconds:
                    raise _Failed(Verdict("timeout", "the sandbox did not start within "
                                          f"{limits.startup_seconds:g} s"))
                if phase in (PH_MODULE, PH_SCHEDULE, PH_UNIT) and (
                    now - c.beat_time > limits.episode_seconds
                ):
                    what = {PH_MODULE: "executing the module", PH_SCHEDULE: "schedule()"}.get(
                        phase, "one episode")
                    raise _Failed(Verdict(
                        "timeout", f"{what} took longer than {limits.episode_seconds:g} s",
                        context=_timeout_context(c, units, names, betas, nqs)))
            for key, _ in sel.select(timeout=0.05):
                c, what = key.data
                if what == "stdin":
                    try:
                        n = os.write(c.proc.stdin.fileno(), c.outbuf[: 1 << 20])
                    except (BrokenPipeError, OSError):
                        n = -1
                    if n < 0:
                        sel.unregister(c.proc.stdin)
                        c.outbuf.clear()
                        continue
                    del c.outbuf[:n]
                    if not c.outbuf:
                        sel.unregister(c.proc.stdin)
                        if c.state == "stopping":
                            with contextlib.suppress(OSError):
                                c.proc.stdin.close()
                    continue
                fd = key.fd
                try:
                    data = os.read(fd, 1 << 20)
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
                    try:
                        frames = c.reader.feed(data)
                    except FrameError as e:
                        raise _Failed(Verdict("crash", f"bad output from the sandbox: {e}")) \
                            from None
                    for header, arrays in frames:
                        try:
                            on_frame(c, header, arrays)
                        except (TypeError, ValueError, KeyError, IndexError) as e:
                            raise _Failed(Verdict("crash", "malformed frame from the sandbox: "
                                                  f"{type(e).__name__}")) from None
            for c in list(live):
                if c.open_fds <= 0 and c.proc.poll() is not None:
                    live.discard(c)
                    if c.state != "done":
                        raise _Failed(_death_verdict(c, c.proc.returncode))
    finally:
        for c in children:
            c.close()
        sel.close()
    info["stdout"] = "".join(c.printed for c in children)
    info["stdout_dropped"] = sum(c.printed_dropped for c in children)
    info["stderr"] = "".join(bytes(c.stderr + c.stdout).decode("utf-8", "replace")
                             for c in children)
    info["traces_truncated"] = any(c.traces_truncated for c in children)
    return results, info


def _pack_request(base: dict[str, Any], datas: Sequence[ReplayData]) -> bytes:
    """The frame every sandbox process of one evaluation starts from: the evaluation's settings
    (`base`) and the gold-free replay arrays of `datas`."""
    header = {**base, "stores": [{"name": d.name, "delta": int(d.delta),
                                  "arrays": _array_fields(d)} for d in datas]}
    arrays = []
    for d in datas:
        for f in _array_fields(d):
            a = np.asarray(getattr(d, f))
            arrays.append(a.astype("<i8" if a.dtype.itemsize > 4 else "<i4"))
    try:
        return pack_frame(header, arrays, strict=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"knob overrides must be numbers, strings or booleans ({e})") from None


def run_sandbox_task(data: ReplayData, base: dict[str, Any], units: list[tuple[int, int, int, int]]
                     ) -> tuple[str, Any]:
    """Units of one store in one sandbox process, wherever this runs (a Ray worker): ("ok",
    (results, info)), or ("verdict", Verdict) when the candidate failed. A verdict is a value,
    not an exception, so it crosses process boundaries intact."""
    limits = SandboxLimits(**base["limits"])
    try:
        return "ok", _run_children(_pack_request(base, [data]), units, [data.name],
                                   list(base["betas"]), [data.num_questions], limits, 1, None)
    except _Failed as f:
        return "verdict", f.verdict


def _sandbox_tasks(units: list[tuple[int, int, int, int]], n_stores: int, parallelism: int
                   ) -> list[tuple[int, list[int]]]:
    """Units grouped into tasks of one store each: (store, unit indices), about two tasks per
    CPU of the cluster, so that one sandbox start-up serves several units."""
    per_store = max(1, math.ceil(2 * parallelism / n_stores))
    tasks = []
    for s in range(n_stores):
        mine = [i for i, u in enumerate(units) if u[0] == s]
        for chunk in np.array_split(np.arange(len(mine)), min(per_store, len(mine))):
            tasks.append((s, [mine[int(i)] for i in chunk]))
    return tasks


def _run_distributed(
    executor: Any,
    base: dict[str, Any],
    datas: list[ReplayData],
    units: list[tuple[int, int, int, int]],
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[int, tuple[dict[str, Any], list[np.ndarray]]], dict[str, Any]]:
    """`_run_children`'s results, from sandbox processes started by the executor's workers
    (one per task). The wall-clock limit holds per task. The first verdict wins, as locally;
    what the tasks printed is joined in task order, so it does not depend on timing."""
    tasks = _sandbox_tasks(units, len(datas), executor.parallelism)
    calls = [(s, (base, [(0, *units[i][1:]) for i in idx])) for s, idx in tasks]
    results: dict[int, tuple[dict[str, Any], list[np.ndarray]]] = {}
    infos: dict[int, dict[str, Any]] = {}
    for t, (status, payload) in executor.map_stores(run_sandbox_task, datas, calls):
        if status == "verdict":
            raise _Failed(payload)
        part, info = payload
        if infos and info["configs"] != next(iter(infos.values()))["configs"]:
            raise _Failed(Verdict("interface", "schedule() is not deterministic: sandbox "
                                  "processes computed different knobs for the same β"))
        infos[t] = info
        for local, res in part.items():
            results[tasks[t][1][local]] = res
        if progress:
            progress(len(results), len(units))
    ordered = [infos[t] for t in sorted(infos)]
    first = ordered[0]
    merged: dict[str, Any] = {
        "name": first["name"], "configs": first["configs"],
        "pids": [p for i in ordered for p in i["pids"]],
        "isolation": {k: all(i.get("isolation", {}).get(k, False) for i in ordered)
                      for k in first.get("isolation", {})},
        # As for the processes of a local run: each capped on its own, joined.
        "stdout": "".join(i["stdout"] for i in ordered),
        "stdout_dropped": sum(i["stdout_dropped"] for i in ordered),
        "stderr": "".join(i["stderr"] for i in ordered),
        "traces_truncated": any(i["traces_truncated"] for i in ordered),
    }
    return results, merged


# ---- the public entry point ------------------------------------------------------------------


def _read_source(source_or_path: str | os.PathLike[str], filename: str | None) -> tuple[str, str]:
    if isinstance(source_or_path, str) and "\n" in source_or_path:  # source text, not a path
        return source_or_path, filename or "<candidate>"
    path = ctl.resolve(str(source_or_path))
    return path.read_text(encoding="utf-8"), filename or str(path)


def _array_fields(d: ReplayData) -> list[str]:
    """The replay arrays the sandbox gets: every (integer) array field of ReplayData that is
    set, whatever fields the store layer adds; all of them gold-free by ReplayData's contract."""
    out = []
    for f in fields(d):
        v = getattr(d, f.name)
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "iub":
                raise ConfigError(f"replay field {f.name} has dtype {v.dtype}, not integers")
            out.append(f.name)
    return out


def _as_store(s: str | os.PathLike[str] | Store) -> Store:
    return s if isinstance(s, Store) else open_store(s)


def evaluate_sandboxed(
    source_or_path: str | os.PathLike[str],
    stores: Sequence[str | os.PathLike[str] | Store],
    betas: Sequence[float | None] | None = None,
    proto: Protocol | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    episodes: bool = False,
    traces: bool = False,
    on_error: str = "raise",
    limits: SandboxLimits | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    filename: str | None = None,
    check_monotone: bool = False,
    executor: str | Any = "local",
    ray_address: str | None = None,
    _admit: bool = True,
) -> SandboxEvaluation:
    """Evaluate an untrusted controller (source text, a path, or a built-in name) over stores × β
    in sandbox processes. Same arguments and the same rows as `autotts.evaluate.evaluate`.
    The sandbox processes run here (`workers` of them), or with executor "ray" (or a
    RayExecutor) one per task on the cluster's workers, which get the gold-free replay arrays
    only (scoring stays here).

    on_error='raise' stops at the first failing episode with SandboxError; 'record' records
    episode failures (exception / invalid_action / non_answer) in `errors`, as in-process
    evaluation does. Failures of the candidate as a whole (syntax, forbidden, interface,
    timeout, memory, crash, an exception outside episodes) always raise SandboxError. With
    check_monotone, a measured non-monotone cost in β raises SandboxError('non_monotone').
    `_admit=False` skips static admission (tests of the run-time guards only)."""
    proto = proto or Protocol()
    proto.check()
    if on_error not in ("raise", "record"):
        raise ConfigError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    limits = limits or SandboxLimits()
    source, fname = _read_source(source_or_path, filename)
    if _admit:
        verdict = admit(source, fname)
        if verdict is not None:
            raise SandboxError(verdict)
    loaded = [_as_store(s) for s in stores]
    if not loaded:
        raise ConfigError("no store to evaluate on")
    beta_list: list[float | None] = list(betas) if betas else [None]
    datas = [s.replay() for s in loaded]  # gold-free: all the sandbox gets
    names = [s.name for s in loaded]
    nqs = [d.num_questions for d in datas]
    base = {
        "source": source, "filename": fname, "admit": _admit, "betas": beta_list,
        "overrides": dict(overrides or {}), "proto": asdict(proto),
        "traces": bool(traces), "on_error": on_error, "limits": asdict(limits),
    }
    from autotts.executors import make_executor

    ex = make_executor(executor or "local", workers=workers, address=ray_address)
    # Sandbox processes here, or started by the workers of an executor that can map tasks over
    # stores (Ray): agent code never runs in an executor's own workers.
    here = not hasattr(ex, "map_stores")
    # Bad knob overrides fail here, before any process starts.
    request = _pack_request(base, datas if here else [])
    units = make_units(len(loaded), len(beta_list), proto.draws, ex.parallelism)

    t0 = time.monotonic()
    try:
        if here:
            results, info = _run_children(request, units, names, beta_list, nqs, limits,
                                          max(1, min(ex.parallelism, len(units))), progress)
        else:
            results, info = _run_distributed(ex, base, datas, units, progress)
    except _Failed as f:
        raise SandboxError(f.verdict) from None
    wall = time.monotonic() - t0
    ev = _aggregate(loaded, beta_list, info, units, results, proto, episodes, traces)
    ev.stdout = info["stdout"] + (
        f"\n[... {info['stdout_dropped']} characters dropped]" if info["stdout_dropped"] else "")
    ev.stderr = info["stderr"]
    ev.traces_truncated = info["traces_truncated"]
    ev.wall_seconds = wall
    ev.pids = tuple(info["pids"])
    ev.isolation = info.get("isolation", {})
    if check_monotone:
        v = monotonicity(ev.rows)
        if v is not None:
            raise SandboxError(v)
    return ev


def _aggregate(
    loaded: list[Store],
    betas: list[float | None],
    info: dict[str, Any],
    units: list[tuple[int, int, int, int]],
    results: dict[int, tuple[dict[str, Any], list[np.ndarray]]],
    proto: Protocol,
    episodes: bool,
    traces: bool,
) -> SandboxEvaluation:
    """The sandbox's answers, costs and traces as the evaluator's blocks, scored by the
    evaluator's own `score` (gold classes read here, in the parent)."""
    blocks: dict[tuple[int, int], list[tuple[int, BlockResult]]] = {}
    for i, (s, r, lo, _) in enumerate(units):
        header, arrays = results[i]
        block_traces = None
        if traces:
            block_traces = []
            for line in bytes(arrays[4]).splitlines():
                try:
                    t = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(t, dict):
                    block_traces.append(t)
        block = BlockResult(arrays[0].astype(np.int32), arrays[1].astype(np.int64),
                            arrays[2].astype(np.int32), arrays[3].astype(np.int32),
                            list(header["errors"]), block_traces)
        blocks.setdefault((s, r), []).append((lo, block))
    runs = list(zip(betas, info["configs"], strict=True))
    ev = score(loaded, info["name"], runs, proto, blocks, episodes=episodes, traces=traces)
    return SandboxEvaluation(ev.rows, ev.episodes, ev.traces, ev.errors)


# ---- measured β-monotonicity -----------------------------------------------------------------


def monotonicity(rows: Sequence[dict[str, Any]], *, z: float = 2.0) -> Verdict | None:
    """The measured β-monotonicity check of cost (DESIGN §5: larger β never lowers the budget).

    Rule: per store, over the rows that have a β, for every pair β_i < β_j, the mean tokens may
    not fall by more than z (= 2) combined standard errors:
        tokens(β_i) − tokens(β_j) > z · sqrt(se_i² + se_j²)   counts as a violation.
    Comparing every pair, not only neighbours, also catches a slow decline made of steps that
    are each within noise. Returns the worst violation (largest drop in units of combined SE)
    as a 'non_monotone' Verdict, or None."""
    from autotts.metrics import monotonicity_violations

    found = monotonicity_violations(rows, z, all_pairs=True)
    if not found:
        return None
    v = max(found, key=lambda v: v.drop / v.se if v.se > 0 else math.inf)
    return Verdict(
        "non_monotone",
        f"mean tokens fall from {v.tokens_low:.0f} at β={v.beta_low:g} to {v.tokens_high:.0f} at "
        f"β={v.beta_high:g} on {v.store} (drop {v.drop:.0f} > {z:g}×SE {z * v.se:.0f})",
        context={"store": v.store, "beta": v.beta_high, "beta_from": v.beta_low,
                 "tokens_from": v.tokens_low, "tokens_to": v.tokens_high, "drop": v.drop,
                 "se": v.se},
    )


# ---- overhead figure for `autotts bench` -----------------------------------------------------

PUBLISHED_PARALLEL_PROBE = {"num_chains": 64, "T": 40, "prune_patience": 7, "warm_up": 15,
                            "probe_burst": 1, "max_steps": 100}


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def sandbox_overhead(
    stores: Sequence[str | os.PathLike[str] | Store] | None = None,
    *,
    draws: int = 100,
    workers: int = 1,
    repeats: int = 1,
    limits: SandboxLimits | None = None,
) -> dict[str, Any]:
    """Parallel-Probe (published config) in-process vs sandboxed: same controller source, stores,
    draws and workers, run back to back (`repeats` times, alternating; the best of each kept).
    Store loading is excluded from both. Default stores: the 8 reference stores.

    Returns {stores, draws, workers, inprocess_s, sandbox_s, ratio, inprocess_cpu_s,
    sandbox_cpu_s, cpu_ratio, identical}: wall times and their ratio (the figure of the issue's
    goal, ≤ 1.5), CPU times of all processes involved (less sensitive to a busy machine), and
    whether the sandboxed rows equal the in-process rows."""
    from autotts.evaluate import evaluate
    from autotts.paths import data_dir

    if stores is None:
        stores = sorted((data_dir() / "autotts-replay").glob("*/*.json"))
        if not stores:
            raise ConfigError(f"no reference stores under {data_dir() / 'autotts-replay'}")
    loaded = [_as_store(s) for s in stores]
    proto = Protocol(draws=draws)
    source = ctl.resolve("parallel_probe").read_text(encoding="utf-8")
    best = {"in": (math.inf, math.inf), "sb": (math.inf, math.inf)}
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="autotts-overhead-") as tmp:
        path = Path(tmp) / "parallel_probe.py"  # one copy of the source for both runs
        path.write_text(source, encoding="utf-8")
        for _ in range(max(1, repeats)):
            for which in ("in", "sb"):
                t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
                if which == "in":
                    ev: Evaluation = evaluate(str(path), loaded, None, proto,
                                              overrides=PUBLISHED_PARALLEL_PROBE, workers=workers)
                else:
                    ev = evaluate_sandboxed(source, loaded, None, proto,
                                            overrides=PUBLISHED_PARALLEL_PROBE, workers=workers,
                                            limits=limits, filename=str(path))
                wall = time.perf_counter() - t0
                cpu = time.process_time() - c0 + _children_cpu() - k0
                best[which] = (min(best[which][0], wall), min(best[which][1], cpu))
                rows[which] = ev.rows
    (t_in, c_in), (t_sb, c_sb) = best["in"], best["sb"]
    return {"stores": len(loaded), "draws": draws, "workers": workers,
            "inprocess_s": t_in, "sandbox_s": t_sb, "ratio": t_sb / t_in,
            "inprocess_cpu_s": c_in, "sandbox_cpu_s": c_sb, "cpu_ratio": c_sb / c_in,
            "identical": rows["in"] == rows["sb"]}
