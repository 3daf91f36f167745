"""Sandboxed evaluation of untrusted controllers (DESIGN §7).

    verdict = admit(source, filename)             # static: syntax, imports, names, contract
    ev = evaluate_sandboxed(source_or_path, stores, betas, proto, limits=SandboxLimits(...))
    verdict = monotonicity(ev.rows)               # measured: cost must grow with β
    pending = start_sandboxed(...)                # its sandbox processes start now ...
    ev = pending.result()                         # ... its batches run now (or .cancel())

`evaluate_sandboxed` returns the same `Evaluation` (rows, episodes, traces, errors) as
`autotts.evaluate.evaluate`, with the same numbers. The controller runs in sandbox processes that
hold no replay data at all: each is served by a trusted judge (autotts.sandbox.supervisor) that
holds the engine and answers the controller's actions one round at a time. The judges run here
(one sandbox process per worker) or, with the Ray executor, on the cluster's workers (one per
task; they get gold-free arrays only). Scoring against the gold classes happens here. Any failure
raises `SandboxError` carrying a typed `Verdict`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing as mp
import os
import select
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from autotts import controller as ctl
from autotts.errors import ConfigError, SandboxError
from autotts.evaluate import Evaluation, score
from autotts.sandbox.admission import Verdict, admit
from autotts.sandbox.supervisor import Cancelled, Failed, SandboxLimits, Unit, run_task
from autotts.store import ReplayData, Store, open_store
from autotts.units import BlockResult, EvalProtocol


@dataclass
class SandboxEvaluation(Evaluation):
    """An `Evaluation` plus what the sandbox saw: the candidate's printed output (capped and
    escaped), the processes' stderr (the same), the wall time, the sandbox process ids (all gone
    by the time this is returned), how many actions crossed the boundary, and which OS-level
    isolation applied."""

    stdout: str = ""
    stderr: str = ""
    traces_truncated: bool = False
    wall_seconds: float = 0.0
    pids: tuple[int, ...] = ()
    isolation: dict[str, bool] = field(default_factory=dict)
    actions: int = 0
    # A stage of a staged evaluation (`draws=(lo, hi)`): what `merge_stages` needs to score the
    # stages together exactly as one evaluation would. Empty for a whole evaluation.
    draw_range: tuple[int, int] | None = None
    blocks: dict[tuple[int, int], list[tuple[int, BlockResult]]] = field(default_factory=dict)
    name: str = ""
    configs: list[dict[str, Any]] = field(default_factory=list)
    deadline: float = math.inf  # wall clock (time.time()) by which the whole evaluation ends


# ---- tasks: one sandbox process each -----------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Units one sandbox process serves: `stores` (indices into the evaluation's stores),
    `units` (with store indices into `stores`) and `index` (each unit's place in the
    evaluation's unit list)."""

    stores: list[int]
    units: list[Unit]
    index: list[int]


# A traced unit's cost relative to another's: its episodes log every action, and its traces are
# pickled back to this process when its task ends, on the sweep's critical path. Measured on a
# discovery sweep (bench's probe_consensus, 2 workers, 2 of 20 draws traced): a traced draw's
# task ran ~0.16 s longer than the other and shipped ~0.1 s more, about a quarter of a draw.
TRACED_UNIT_COST = 1.25


def _tasks(units: list[Unit], n_stores: int, n: int, *, one_store: bool,
           traced: Callable[[Unit], bool] | None = None) -> list[Task]:
    """Units in about `n` tasks, each a contiguous run of units in (draw, β, store) order; with
    one_store, no task spans two stores (a Ray task ships one store).

    Draw-major on purpose: a β's cost can differ from another's by 20× (β sets the width and
    depth), so splitting the β-major unit list gave one local worker the cheap half of the grid
    and the other the dear half (5.6 vs 9.6 s CPU for a Parallel-Probe-class sweep); a run of
    draws holds every β alike. A batch (one β, one draw: autotts.sandbox.supervisor._batches)
    and the β whose knobs repeat another β's still sit in one task, except where a task boundary
    falls inside a draw.

    `traced` (local tasks only): which units are traced. The tasks then hold equal costs rather
    than equal numbers of units, a traced unit counting TRACED_UNIT_COST: the traced draws come
    first, so their task takes fewer draws and its larger result is shipped while the others
    still run."""
    order = sorted(range(len(units)), key=lambda i: (units[i][2], units[i][1], units[i][0]))
    groups: list[list[int]] = []
    if one_store:
        per_store = max(1, math.ceil(n / n_stores))
        for s in range(n_stores):
            mine = [i for i in order if units[i][0] == s]
            groups += [[mine[int(i)] for i in c]
                       for c in np.array_split(np.arange(len(mine)), min(per_store, len(mine)))
                       if len(c)]
    elif traced is not None and 0 < sum(map(traced, units)) < len(units):
        cost = np.cumsum([TRACED_UNIT_COST if traced(units[i]) else 1.0 for i in order])
        k = max(1, min(n, len(units)))
        cuts = np.searchsorted(cost, cost[-1] * np.arange(1, k) / k, side="left") + 1
        groups = [[order[int(i)] for i in c] for c in np.split(np.arange(len(units)), cuts)
                  if len(c)]
    else:
        groups = [[order[int(i)] for i in c]
                  for c in np.array_split(np.arange(len(units)), max(1, min(n, len(units))))
                  if len(c)]
    tasks = []
    for idx in groups:
        stores = sorted({units[i][0] for i in idx})
        local = {s: k for k, s in enumerate(stores)}
        tasks.append(Task(stores, [(local[units[i][0]], *units[i][1:]) for i in idx], idx))
    return tasks


def run_sandbox_task(datas: Sequence[ReplayData] | ReplayData, request: dict[str, Any],
                     units: list[Unit], trace_items: int, gate: _Gate | None = None
                     ) -> tuple[str, Any]:
    """One task wherever it runs (here, a local worker process, a Ray worker): ("ok", (results,
    info)), or ("verdict", Verdict) when the candidate failed. A verdict is a value, not an
    exception, so it crosses process boundaries intact. With a `gate` (a local pool started
    ahead, `start_sandboxed`): ("cancelled", None) when the evaluation was called off."""
    if isinstance(datas, ReplayData):
        datas = [datas]
    limits = SandboxLimits(**{k: v for k, v in request["limits"].items()
                              if k != "isolation_disable"})
    if gate is not None and gate.ready():  # decided already: no sandbox start to hold
        deadline = gate.take()
        if deadline is None:
            return "cancelled", None
        request["deadline"], gate = deadline, None
    try:
        return "ok", run_task(request, datas, units, limits, trace_items=trace_items, gate=gate)
    except Failed as f:
        return "verdict", f.verdict
    except Cancelled:
        return "cancelled", None


class _Gate:
    """What a local pool's tasks wait on before their first batch: a pipe that the evaluating
    process writes once, one record per task, either "go" with the evaluation's wall-clock
    deadline or "stop" (supervisor.run_task's `gate`). A record is 9 bytes and every write holds
    whole records and at most PIPE_BUF bytes (atomic), so each task, in whichever worker,
    reads one whole record. The workers close their copies of the write end: a gone
    evaluating process reads as "stop"."""

    GO, STOP = b"g", b"x"
    SIZE = 9

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.r, self.w = os.pipe()

    def _write(self, record: bytes, n: int) -> None:
        per = select.PIPE_BUF // self.SIZE
        for i in range(0, n, per):
            os.write(self.w, record * min(per, n - i))

    def go(self, n: int, deadline: float) -> None:
        self._write(self.GO + struct.pack("<d", deadline), n)

    def stop(self, n: int) -> None:
        self._write(self.STOP * self.SIZE, n)

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.r = self.w = -1

    # In a worker process:
    def forked(self) -> None:
        if os.getpid() != self.owner and self.w >= 0:
            os.close(self.w)
            self.w = -1

    def fileno(self) -> int:
        return self.r

    def ready(self) -> bool:
        return bool(select.select([self.r], [], [], 0)[0])

    def take(self) -> float | None:
        """The next record (blocks until there is one): the deadline, or None for stop."""
        data = os.read(self.r, self.SIZE)
        if len(data) != self.SIZE or data[:1] != self.GO:
            return None
        return float(struct.unpack("<d", data[1:])[0])


_POOL: dict[str, Any] = {}  # what forked local workers inherit
_POOL_LOCK = threading.Lock()  # held from writing _POOL until the workers are forked


def _pool_run(t: int) -> tuple[str, Any]:
    task: Task = _POOL["tasks"][t]
    gate: _Gate = _POOL["gate"]
    gate.forked()
    return run_sandbox_task([_POOL["datas"][s] for s in task.stores], _POOL["request"],
                            task.units, _POOL["trace_items"], gate)


class _LocalPool:
    """A task list's local worker processes (forks of this process), forked at once; each
    task's sandbox process starts in its worker and waits at the gate before its first batch
    until `outcomes` (go) or `cancel` (stop) is called."""

    def __init__(self, tasks: list[Task], request: dict[str, Any], datas: list[ReplayData],
                 share: int) -> None:
        self.n = len(tasks)
        self.gate = _Gate()
        try:
            self.pool, self.outs, self.ours = _fork_pool(tasks, request, datas, share, self.gate)
        except BaseException:
            self.gate.close()
            raise
        self.live = True

    def outcomes(self, deadline: float) -> Iterator[tuple[int, tuple[str, Any]]]:
        """(task index, outcome) in task order; the tasks run under `deadline`."""
        self.gate.go(self.n, deadline)
        try:
            with self.pool:
                yield from enumerate(self.outs)
        finally:
            self._done()

    def cancel(self) -> None:
        """Stop every task before its first batch and wait until the workers are done: their
        sandbox processes (told to stop, or killed while still starting) are gone and cleaned
        up, and nothing of theirs is kept."""
        if not self.live:
            return
        try:
            self.gate.stop(self.n)
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._done()

    def _done(self) -> None:
        if self.live:
            self.live = False
            if self.ours:
                gc.unfreeze()
            self.gate.close()


def _outcomes(ex: Any, tasks: list[Task], request: dict[str, Any], datas: list[ReplayData],
              share: int) -> Any:
    """(task index, outcome) for every task, from wherever the executor runs them."""
    if hasattr(ex, "map_stores"):  # Ray: one store shipped per task
        calls = [(t.stores[0], (request, t.units, share)) for t in tasks]
        yield from ex.map_stores(run_sandbox_task, datas, calls)
        return
    if len(tasks) == 1:
        t = tasks[0]
        yield 0, run_sandbox_task([datas[s] for s in t.stores], request, t.units, share)
        return
    yield from _LocalPool(tasks, request, datas, share).outcomes(request["deadline"])


def _fork_pool(tasks: list[Task], request: dict[str, Any], datas: list[ReplayData], share: int,
               gate: _Gate) -> tuple[ProcessPoolExecutor, Iterator[tuple[str, Any]], bool]:
    """The pool with every worker forked (and the tasks submitted), its outcomes in task order,
    and whether the collector's freeze is ours to undo."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    # The workers are forks of this process. A full collection in one walks every object it
    # inherited, writing to each: a copy-on-write fault per page of them (~0.2 s CPU per
    # worker per discovery sweep, and as much again in this process when it collects while
    # they live). Frozen before the fork, those objects are left out of every collection until
    # the workers are gone (the interpreter's advice for fork without exec); unfrozen, the
    # next collection here walks them as before. Nothing is collected that would not be.
    # gc.unfreeze() thaws every frozen object, so where the application (or `autotts eval`,
    # after its loads) froze some already, its freeze is left as it is and nothing is frozen
    # here: what it froze is what the workers would have inherited anyway.
    #
    # _POOL is one per process, and discovery evaluates a response's candidates in threads: from
    # the write to the fork it is held (a thread switch there gave one candidate's workers the
    # other's source and tasks, tests/test_redteam_session11.py). With fork the first submit
    # forks every worker, so once map() has returned they hold their copies and it is emptied.
    with _POOL_LOCK:
        _POOL.update(tasks=tasks, datas=datas, request=request, trace_items=share, gate=gate)
        ours = gc.get_freeze_count() == 0
        if ours:
            gc.freeze()
        try:
            pool = ProcessPoolExecutor(len(tasks), mp_context=ctx)
            try:
                outcomes = pool.map(_pool_run, range(len(tasks)))
            except BaseException:
                gate.stop(len(tasks))
                pool.shutdown()
                raise
        except BaseException:
            if ours:
                gc.unfreeze()
            raise
        finally:
            _POOL.clear()
    return pool, outcomes, ours


def _traced(request: dict[str, Any]) -> Callable[[Unit], bool] | None:
    """Which units the judges trace (supervisor: a unit of draw d, while d < trace_draws)."""
    if not request.get("traces"):
        return None
    limit = request.get("trace_draws")
    return lambda u: limit is None or u[2] < limit


def _task_list(ex: Any, datas: list[ReplayData], units: list[Unit], limits: SandboxLimits,
               request: dict[str, Any]) -> tuple[list[Task], int]:
    """The evaluation's tasks (one sandbox process each) and each task's trace budget."""
    ray = hasattr(ex, "map_stores")
    tasks = _tasks(units, len(datas), ex.parallelism * (2 if ray else 1), one_store=ray,
                   traced=None if ray else _traced(request))
    return tasks, max(1, limits.max_trace_items // len(tasks))  # the budget holds across all


def _run(ex: Any, request: dict[str, Any], datas: list[ReplayData], units: list[Unit],
         limits: SandboxLimits, progress: Callable[[int, int], None] | None
         ) -> tuple[dict[int, BlockResult], dict[str, Any]]:
    """Every unit through sandbox processes: one here, one per local worker process, or one per
    Ray task. The first verdict (in task order) wins; printed output is joined in task order,
    so nothing depends on timing."""
    tasks, share = _task_list(ex, datas, units, limits, request)
    return _collect(_outcomes(ex, tasks, request, datas, share), tasks, len(units), progress)


def _collect(outcomes: Any, tasks: list[Task], n_units: int,
             progress: Callable[[int, int], None] | None
             ) -> tuple[dict[int, BlockResult], dict[str, Any]]:
    """The units' results and the sandboxes' reports from the tasks' outcomes (in task order)."""
    results: dict[int, BlockResult] = {}
    infos: dict[int, dict[str, Any]] = {}
    for t, (status, payload) in outcomes:
        if status == "verdict":
            raise Failed(payload)
        if status != "ok":  # "cancelled": only a gate that said stop, never one that said go
            raise Failed(Verdict("crash", "a sandbox task was called off"))
        part, infos[t] = payload
        for local, i in enumerate(tasks[t].index):
            results[i] = part[local]
        if progress:
            progress(len(results), n_units)
    ordered = [infos[t] for t in sorted(infos)]
    first = ordered[0]
    if any(i["configs"] != first["configs"] for i in ordered):
        raise Failed(Verdict("interface", "schedule() is not deterministic: sandbox processes "
                             "computed different knobs for the same β"))
    merged = {
        "name": first["name"], "configs": first["configs"],
        "pids": [p for i in ordered for p in i["pids"]],
        "isolation": {k: all(i["isolation"].get(k, False) for i in ordered)
                      for k in first["isolation"]},
        "stdout": "".join(i["stdout"] for i in ordered),
        "stdout_dropped": sum(i["stdout_dropped"] for i in ordered),
        "stderr": "".join(i["stderr"] for i in ordered),
        "actions": sum(i["actions"] for i in ordered),
    }
    return results, merged


def round_groups(ex: Any) -> int:
    """How many groups of a batch's episodes take turns in the sandbox process (child.Scheduler):
    two let a judge and its sandbox process work at once, which pays where each local worker
    has two cores to itself (one worker on two cores: the wall time of a one-worker sweep);
    where the workers alone fill the cores, one group serves the same actions in half the
    rounds, each ~60 µs of the two processes' CPU (two workers on two cores: a discovery sweep's
    CPU -9%, identical rows). Ray tasks keep two."""
    if hasattr(ex, "map_stores"):
        return 2
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 2 if 2 * ex.parallelism <= cores else 1


# ---- the public entry point ------------------------------------------------------------------


def _read_source(source_or_path: str | os.PathLike[str], filename: str | None) -> tuple[str, str]:
    if isinstance(source_or_path, str) and "\n" in source_or_path:  # source text, not a path
        return source_or_path, filename or "<candidate>"
    path = ctl.resolve(str(source_or_path))
    return path.read_text(encoding="utf-8"), filename or str(path)


def _as_store(s: str | os.PathLike[str] | Store) -> Store:
    return s if isinstance(s, Store) else open_store(s)


def _check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        json.dumps(overrides, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"knob overrides must be numbers, strings or booleans ({e})") from None
    return dict(overrides)


def evaluate_sandboxed(
    source_or_path: str | os.PathLike[str],
    stores: Sequence[str | os.PathLike[str] | Store],
    betas: Sequence[float | None] | None = None,
    proto: EvalProtocol | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    episodes: bool = False,
    traces: bool = False,
    trace_draws: int | None = None,
    on_error: str = "raise",
    limits: SandboxLimits | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    filename: str | None = None,
    check_monotone: bool = False,
    executor: str | Any = "local",
    ray_address: str | None = None,
    allow_weak_sandbox: bool = False,
    draws: tuple[int, int] | None = None,
    deadline: float | None = None,
    _admit: bool = True,
    _unrestricted: bool = False,
) -> SandboxEvaluation:
    """Evaluate an untrusted controller (source text, a path, or a built-in name) over stores × β
    in sandbox processes. Same arguments and the same rows as `autotts.evaluate.evaluate`.

    on_error='raise' stops at the first failing episode (in episode order) with SandboxError;
    'record' records episode failures (exception / invalid_action / non_answer) in `errors`, as
    in-process evaluation does. Failures of the candidate as a whole (syntax, forbidden,
    interface, timeout, memory, output_limit, crash, an exception outside episodes) always
    raise SandboxError. With check_monotone, a measured non-monotone cost in β raises
    SandboxError('non_monotone'). `_admit=False` skips static admission (tests of the run-time
    guards only); `_unrestricted=True` runs the candidate with the real builtins and no
    RestrictedPython (tests only: a candidate that has obtained arbitrary code execution).

    With traces, `trace_draws=k` traces only the first k draws (the rest run untraced, as in a
    separate evaluation): a sweep and the digest's traced draws in one evaluation.

    Staged evaluation: `draws=(lo, hi)` runs only draws [lo, hi) of the protocol (the same
    episodes, seeds and units as those draws of a whole evaluation; `proto.draws` stays the
    protocol's total) and returns them as a stage: rows and episodes over those draws only,
    plus the per-draw blocks. `merge_stages` joins stages that cover [0, proto.draws) into the
    evaluation a single call would have returned, with the same rows, episodes, traces and
    errors. `deadline` (wall clock, time.time()) ends the evaluation then instead of
    `limits.wall_seconds` from now: a later stage passes the first stage's `deadline`, so the
    wall-clock limit holds for the stages together."""
    plan = _plan(source_or_path, stores, betas, proto, overrides=overrides, episodes=episodes,
                 traces=traces, trace_draws=trace_draws, on_error=on_error, limits=limits,
                 workers=workers, progress=progress, filename=filename,
                 check_monotone=check_monotone, executor=executor, ray_address=ray_address,
                 allow_weak_sandbox=allow_weak_sandbox, draws=draws, deadline=deadline,
                 _admit=_admit, _unrestricted=_unrestricted)
    return plan.execute(None)


def start_sandboxed(source_or_path: str | os.PathLike[str],
                    stores: Sequence[str | os.PathLike[str] | Store],
                    betas: Sequence[float | None] | None = None,
                    proto: EvalProtocol | None = None, **kwargs: Any) -> PendingEvaluation:
    """`evaluate_sandboxed` (the same arguments) in two steps: its sandbox processes start now,
    its batches run at `result()`, which returns (or raises) exactly what evaluate_sandboxed
    would have; or `cancel()` calls it off. Discovery starts a sweep while its smoke run runs.

    With local worker processes (two tasks or more) the workers are forked now and each
    starts its sandbox process, which loads, locks down and computes the knobs, then waits
    before its first batch (supervisor.run_task's gate); the wall-clock limit (or `deadline`)
    starts at `result()`, as it would with evaluate_sandboxed called then. Otherwise (one
    task, Ray) nothing starts before `result()`. Any error of the arguments or of admission is
    raised by `result()`, not here, so that what ran before it fails first."""
    return PendingEvaluation(lambda: _plan(source_or_path, stores, betas, proto, **kwargs))


class PendingEvaluation:
    """A sandboxed evaluation started ahead (`start_sandboxed`): call `result()` or `cancel()`
    exactly once (a `with` block cancels it unless `result()` was called)."""

    def __init__(self, make: Callable[[], _Plan]) -> None:
        self._error: Exception | None = None
        self._pool: _LocalPool | None = None
        self._ended = False
        try:
            self._plan = make()
            self._pool = self._plan.start()
        except Exception as e:  # raised by result(), in the order the caller runs things
            self._error = e

    def result(self) -> SandboxEvaluation:
        if self._ended:
            raise RuntimeError("this evaluation has ended already")
        self._ended = True
        if self._error is not None:
            raise self._error
        return self._plan.execute(self._pool)

    def cancel(self) -> None:
        """Call it off: returns once every process it started is gone and cleaned up."""
        if self._ended:
            return
        self._ended = True
        if self._pool is not None:
            self._pool.cancel()

    def __enter__(self) -> PendingEvaluation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


@dataclass
class _Plan:
    """What an evaluation decided before any sandbox process starts."""

    loaded: list[Store]
    beta_list: list[float | None]
    proto: EvalProtocol
    draws: tuple[int, int] | None
    request: dict[str, Any]
    ex: Any
    datas: list[ReplayData]
    units: list[Unit]
    limits: SandboxLimits
    deadline: float | None
    episodes: bool
    traces: bool
    check_monotone: bool
    progress: Callable[[int, int], None] | None
    tasks: list[Task] = field(default_factory=list)
    share: int = 0

    def start(self) -> _LocalPool | None:
        """Local worker processes with their sandbox processes started (two tasks or more),
        held before their first batch; None where nothing starts ahead."""
        if hasattr(self.ex, "map_stores"):
            return None
        self.tasks, self.share = _task_list(self.ex, self.datas, self.units, self.limits,
                                             self.request)
        if len(self.tasks) < 2:
            return None
        return _LocalPool(self.tasks, self.request, self.datas, self.share)

    def execute(self, pool: _LocalPool | None) -> SandboxEvaluation:
        """Run (or, started ahead, go on with) the evaluation and score it."""
        limits, request, units = self.limits, self.request, self.units
        t0 = time.monotonic()
        # The whole evaluation, all tasks (and, given a deadline, all stages).
        request["deadline"] = (time.time() + limits.wall_seconds if self.deadline is None
                               else self.deadline)
        try:
            if pool is None:
                results, info = _run(self.ex, request, self.datas, units, limits, self.progress)
            else:
                results, info = _collect(pool.outcomes(request["deadline"]), self.tasks,
                                         len(units), self.progress)
        except Failed as f:
            raise SandboxError(f.verdict) from None
        wall = time.monotonic() - t0
        d_lo, d_hi = (0, self.proto.draws) if self.draws is None else self.draws
        proto, beta_list = self.proto, self.beta_list
        blocks: dict[tuple[int, int], list[tuple[int, BlockResult]]] = {}
        for i, (s, r, lo, _) in enumerate(units):
            blocks.setdefault((s, r), []).append((lo, results[i]))
        runs = list(zip(beta_list, info["configs"], strict=True))
        staged = self.draws is not None
        ev = score(self.loaded, info["name"], runs,
                   replace(proto, draws=d_hi - d_lo) if staged else proto,
                   blocks, episodes=self.episodes, traces=self.traces)
        if staged and d_lo and ev.episodes:
            for e in ev.episodes:  # score numbers a stage's draws from 0
                e["draw"] += d_lo
        out = SandboxEvaluation(ev.rows, ev.episodes, ev.traces, ev.errors, ev.outcomes)
        if staged:
            out.draw_range, out.blocks = (d_lo, d_hi), blocks
            out.name, out.configs = info["name"], list(info["configs"])
        out.deadline = request["deadline"]
        out.stdout = info["stdout"] + (
            f"\n[... {info['stdout_dropped']} characters dropped]" if info["stdout_dropped"]
            else "")
        out.stderr = info["stderr"]
        out.wall_seconds = wall
        out.pids = tuple(info["pids"])
        out.isolation = info["isolation"]
        out.actions = info["actions"]
        if self.check_monotone:
            v = monotonicity(out.rows)
            if v is not None:
                raise SandboxError(v)
        return out


def _plan(
    source_or_path: str | os.PathLike[str],
    stores: Sequence[str | os.PathLike[str] | Store],
    betas: Sequence[float | None] | None = None,
    proto: EvalProtocol | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    episodes: bool = False,
    traces: bool = False,
    trace_draws: int | None = None,
    on_error: str = "raise",
    limits: SandboxLimits | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    filename: str | None = None,
    check_monotone: bool = False,
    executor: str | Any = "local",
    ray_address: str | None = None,
    allow_weak_sandbox: bool = False,
    draws: tuple[int, int] | None = None,
    deadline: float | None = None,
    _admit: bool = True,
    _unrestricted: bool = False,
) -> _Plan:
    """evaluate_sandboxed's checks, admission, request, stores and units."""
    proto = proto or EvalProtocol()
    proto.check()
    d_lo, d_hi = (0, proto.draws) if draws is None else draws
    if not (isinstance(d_lo, int) and isinstance(d_hi, int)
            and 0 <= d_lo < d_hi <= proto.draws):
        raise ConfigError(f"draws must be a range (lo, hi) with 0 <= lo < hi <= "
                          f"{proto.draws} (the protocol's draws), got {draws!r}")
    if on_error not in ("raise", "record"):
        raise ConfigError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    limits = limits or SandboxLimits()
    from autotts.sandbox.lockdown import disabled_from_env, require_strong

    require_strong(allow_weak_sandbox)  # a platform that cannot confine the sandbox: refuse
    source, fname = _read_source(source_or_path, filename)
    if _admit and not _unrestricted:
        verdict = admit(source, fname)
        if verdict is not None:
            raise SandboxError(verdict)
    loaded = [_as_store(s) for s in stores]
    if not loaded:
        raise ConfigError("no store to evaluate on")
    beta_list: list[float | None] = list(betas) if betas else [None]
    request = {
        "source": source, "filename": fname, "admit": _admit, "betas": beta_list,
        # Admitted here, just above: the sandbox process does not admit the same text again.
        "admitted": bool(_admit and not _unrestricted),
        "overrides": _check_overrides(overrides or {}), "proto": asdict(proto),
        "traces": bool(traces), "on_error": on_error,
        "trace_draws": None if trace_draws is None else int(trace_draws),
        # AUTOTTS_SANDBOX_DISABLE turns mechanisms off in the sandbox processes as in probe().
        "limits": {**asdict(limits), "isolation_disable": disabled_from_env()},
        "unrestricted": bool(_unrestricted), "allow_weak": bool(allow_weak_sandbox),
    }
    from autotts.executors import make_executor

    ex = make_executor(executor or "local", workers=workers, address=ray_address)
    request["groups"] = round_groups(ex)
    datas = [s.replay() for s in loaded]  # gold-free: all the judges get
    # One draw per unit, ordered so that a task's consecutive units form whole batches (one β,
    # one draw, every store): a sandbox process never meets the same question twice.
    units = [(s, r, d, d + 1) for r in range(len(beta_list)) for d in range(d_lo, d_hi)
             for s in range(len(loaded))]
    return _Plan(loaded, beta_list, proto, draws, request, ex, datas, units, limits, deadline,
                 episodes, traces, check_monotone, progress)


def merge_stages(stages: Sequence[SandboxEvaluation],
                 stores: Sequence[str | os.PathLike[str] | Store],
                 betas: Sequence[float | None] | None, proto: EvalProtocol, *,
                 episodes: bool = False, traces: bool = False) -> SandboxEvaluation:
    """The evaluation of draws [0, proto.draws) from its stages (`evaluate_sandboxed(...,
    draws=(lo, hi))` over the same stores, β and protocol, ranges in order and without gaps):
    scored once from the stages' per-draw blocks, so rows, episodes, traces and errors are those
    of one whole evaluation. Printed output, pids and actions are the stages' joined; a
    schedule() that gave different knobs in two stages is an 'interface' SandboxError, as it is
    between the tasks of one evaluation."""
    if not stages:
        raise ConfigError("merge_stages needs at least one stage")
    edges = [s.draw_range or (-1, -1) for s in stages]
    cover = [0, *(hi for _, hi in edges)]
    if [lo for lo, _ in edges] != cover[:-1] or cover[-1] != proto.draws:
        raise ConfigError(f"stages cover draws {edges}, not [0, {proto.draws}) in order")
    first = stages[0]
    if any(s.configs != first.configs or s.name != first.name for s in stages):
        raise SandboxError(Verdict("interface", "schedule() is not deterministic: two stages "
                                   "of the evaluation computed different knobs for the same β"))
    loaded = [_as_store(s) for s in stores]
    beta_list: list[float | None] = list(betas) if betas else [None]
    blocks: dict[tuple[int, int], list[tuple[int, BlockResult]]] = {}
    for st in stages:
        for key, parts in st.blocks.items():
            blocks.setdefault(key, []).extend(parts)
    runs = list(zip(beta_list, first.configs, strict=True))
    ev = score(loaded, first.name, runs, proto, blocks, episodes=episodes, traces=traces)
    out = SandboxEvaluation(ev.rows, ev.episodes, ev.traces, ev.errors, ev.outcomes)
    out.stdout = "".join(s.stdout for s in stages)
    out.stderr = "".join(s.stderr for s in stages)
    out.wall_seconds = sum(s.wall_seconds for s in stages)
    out.pids = tuple(p for s in stages for p in s.pids)
    out.isolation = {k: all(s.isolation.get(k, False) for s in stages) for k in first.isolation}
    out.actions = sum(s.actions for s in stages)
    out.deadline = first.deadline
    return out


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
    Store loading is excluded from all. Default stores: the 8 reference stores.

    In-process runs twice: per episode (`run`, the code the sandbox runs: the like-for-like
    baseline, `inprocess_s`) and through `run_batch` (the fastest in-process form, which the
    sandbox does not offer: `inprocess_batch_s`).

    Returns {stores, draws, workers, inprocess_s, inprocess_batch_s, sandbox_s, ratio,
    ratio_vs_batch, inprocess_cpu_s, inprocess_batch_cpu_s, sandbox_cpu_s, cpu_ratio,
    identical, actions, round_trips_per_s}: wall times and their ratios (the goal: within 2× of
    `run` in-process), CPU times of all processes involved (less sensitive to a busy machine),
    whether the sandboxed rows equal both in-process ones, and how many actions crossed the
    boundary per second (each is a request answered by the judge)."""
    from autotts.evaluate import evaluate
    from autotts.paths import data_dir

    if stores is None:
        # The 8 published AIME stores (a fetched catalog also holds HMMT25).
        stores = sorted((data_dir() / "autotts-replay").glob("*/aime2[45].json"))
        if not stores:
            raise ConfigError(f"no reference stores under {data_dir() / 'autotts-replay'}: "
                              "get them with `autotts data fetch autotts-qwen3`")
    loaded = [_as_store(s) for s in stores]
    proto = EvalProtocol(draws=draws)
    source = ctl.resolve("parallel_probe").read_text(encoding="utf-8")
    best = {k: (math.inf, math.inf) for k in ("in", "batch", "sb")}
    actions = 0
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="autotts-overhead-") as tmp:
        path = Path(tmp) / "parallel_probe.py"  # one copy of the source for all runs
        path.write_text(source, encoding="utf-8")
        for _ in range(max(1, repeats)):
            for which in ("in", "batch", "sb"):
                t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
                if which != "sb":
                    ev: Evaluation = evaluate(str(path), loaded, None, proto,
                                              overrides=PUBLISHED_PARALLEL_PROBE, workers=workers,
                                              batch=which == "batch")
                else:
                    ev = evaluate_sandboxed(source, loaded, None, proto,
                                            overrides=PUBLISHED_PARALLEL_PROBE, workers=workers,
                                            limits=limits, filename=str(path))
                wall = time.perf_counter() - t0
                cpu = time.process_time() - c0 + _children_cpu() - k0
                best[which] = (min(best[which][0], wall), min(best[which][1], cpu))
                rows[which] = ev.rows
                if isinstance(ev, SandboxEvaluation):
                    actions = ev.actions
    (t_in, c_in), (t_b, c_b), (t_sb, c_sb) = best["in"], best["batch"], best["sb"]
    return {"stores": len(loaded), "draws": draws, "workers": workers,
            "inprocess_s": t_in, "inprocess_batch_s": t_b, "sandbox_s": t_sb,
            "ratio": t_sb / t_in, "ratio_vs_batch": t_sb / t_b,
            "inprocess_cpu_s": c_in, "inprocess_batch_cpu_s": c_b, "sandbox_cpu_s": c_sb,
            "cpu_ratio": c_sb / c_in,
            "identical": rows["in"] == rows["sb"] == rows["batch"], "actions": actions,
            "round_trips_per_s": actions / t_sb}
