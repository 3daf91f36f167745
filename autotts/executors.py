"""Where evaluation work units run: local processes (default) or a Ray cluster.

Both executors run the same `run_unit` on the same gold-free store arrays and yield the same
`BlockResult`s, so results are identical bit for bit; only throughput differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from autotts.errors import ConfigError
from autotts.store import ReplayData
from autotts.units import BlockResult, EvaluationError, Job, Questions, Unit, run_unit

EXECUTORS = ("local", "ray")

# Per-process state of local workers: the stores (inherited through fork) and the current job.
_LOCAL: dict[str, Any] = {}


def _local_init(stores: Sequence[ReplayData] | None, job: Job) -> None:
    if stores is not None:  # spawn: stores arrive pickled once per worker, not once per unit
        _LOCAL["questions"] = [Questions(d) for d in stores]
    _LOCAL["job"] = job


def _local_run(unit: Unit) -> tuple[Unit, BlockResult]:
    return unit, run_unit(_LOCAL["questions"][unit[0]], _LOCAL["job"], unit)


class LocalExecutor:
    """In this process for one worker; a process pool otherwise (fork where available, so the
    workers share the parent's store arrays copy-on-write)."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.parallelism = workers

    def run(self, stores: Sequence[ReplayData], job: Job, units: list[Unit]
            ) -> Iterator[tuple[Unit, BlockResult]]:
        questions = [Questions(d) for d in stores]
        if self.parallelism == 1 or len(units) == 1:
            for unit in units:
                yield unit, run_unit(questions[unit[0]], job, unit)
            return
        # Imported here: a one-worker evaluation (the CLI's default) never pays for them.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if "fork" in mp.get_all_start_methods():
            ctx, init = mp.get_context("fork"), (None, job)
            _LOCAL["questions"] = questions
        else:
            ctx, init = mp.get_context("spawn"), (list(stores), job)
        try:
            with ProcessPoolExecutor(
                min(self.parallelism, len(units)), mp_context=ctx,
                initializer=_local_init, initargs=init,
            ) as pool:
                yield from pool.map(_local_run, units)
        finally:
            _LOCAL.clear()


# ---- Ray ---------------------------------------------------------------------------------------


def fingerprint(data: ReplayData) -> str:
    """A content key for a store's replay arrays. Keys the object-store copy (shipped once per
    executor, however many evaluations reuse it) and each worker's prepared layout; a content key,
    unlike id(), can never hand one store's cached layout to another."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.name}\0{data.delta}".encode())
    for f in dataclasses.fields(data):  # every array, whatever fields the store layer adds
        arr = getattr(data, f.name)
        if isinstance(arr, np.ndarray):
            h.update(f"{f.name}\0{arr.dtype}".encode() + arr.tobytes())
    return h.hexdigest()


# Per Ray worker process: prepared store layouts, most recently used last (bounded: a long-lived
# worker may serve many evaluations over different stores).
_RAY_CACHE: OrderedDict[str, Questions] = OrderedDict()
_RAY_CACHE_SIZE = 16


def _ray_run(data: ReplayData, key: str, job: Job, unit: Unit) -> tuple[Unit, BlockResult]:
    questions = _RAY_CACHE.get(key)
    if questions is None:
        questions = _RAY_CACHE[key] = Questions(data)
        while len(_RAY_CACHE) > _RAY_CACHE_SIZE:
            _RAY_CACHE.popitem(last=False)
    _RAY_CACHE.move_to_end(key)
    return unit, run_unit(questions, job, unit)


def _ray_call(fn: Callable[..., Any], data: ReplayData, *args: Any) -> Any:
    return fn(data, *args)


class RayExecutor:
    """Work units as Ray tasks (one CPU each).

    Each store's arrays go into the object store once per executor (workers on a node map them
    zero-copy, and each worker prepares a store's layout once), and the controller travels as
    source, so remote hosts need no checkout. `address` and `num_cpus` as for `connect_ray`.
    Waits are bounded: `connect_timeout_s` for the cluster to answer, `task_timeout_s` for some
    work unit to finish (a cluster without free CPUs would otherwise wait forever)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *,
                 connect_timeout_s: float = 60.0, task_timeout_s: float | None = 600.0) -> None:
        from autotts.raysupport import connect_ray  # logging, socket: Ray only

        self.started_runtime = connect_ray(address, num_cpus=num_cpus,
                                           connect_timeout_s=connect_timeout_s)
        import ray

        self._ray = ray
        self.task_timeout_s = task_timeout_s
        self.parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1)(_ray_run)
        self._call = ray.remote(num_cpus=1)(_ray_call)
        self._refs: dict[str, Any] = {}  # store fingerprint -> its object-store copy
        self._lock = threading.Lock()

    def close(self) -> None:
        """Drop the shipped stores (references into this runtime's object store) and stop the
        runtime if this executor started it; one it joined keeps running."""
        with self._lock:
            self._refs.clear()
        if self.started_runtime and self._ray.is_initialized():
            self._ray.shutdown()
        self.started_runtime = False

    def _put(self, data: ReplayData) -> tuple[str, Any]:
        key = fingerprint(data)
        with self._lock:  # the discovery loop evaluates several candidates from threads
            if key not in self._refs:
                self._refs[key] = self._ray.put(data)
            return key, self._refs[key]

    def run(self, stores: Sequence[ReplayData], job: Job, units: list[Unit]
            ) -> Iterator[tuple[Unit, BlockResult]]:
        shipped = [self._put(d) for d in stores]
        job_ref = self._ray.put(job)
        refs = []
        for u in units:
            key, ref = shipped[u[0]]
            refs.append(self._remote.remote(ref, key, job_ref, u))

        def what(i: int) -> str:
            s, r, lo, hi = units[i]
            return f"work unit {job.store_names[s]} config {r} draws {lo}-{hi}"

        for _, result in self._gather(refs, what):
            yield result

    def map_stores(self, fn: Callable[..., Any], stores: Sequence[ReplayData],
                   calls: Sequence[tuple[int, tuple[Any, ...]]]) -> Iterator[tuple[int, Any]]:
        """fn(stores[s], *args) for each (s, args) in `calls`, one Ray task (one CPU) each, the
        stores shipped once as for `run`; yields (call index, result) as calls finish. `fn`
        must be importable on the workers (a module-level function of this package)."""
        refs = []
        for s, args in calls:
            _, ref = self._put(stores[s])
            refs.append(self._call.remote(fn, ref, *args))
        yield from self._gather(refs, lambda i: f"task {i} on store {stores[calls[i][0]].name}")

    def _gather(self, refs: list[Any], what: Callable[[int], str]) -> Iterator[tuple[int, Any]]:
        """Results as tasks finish, with a bounded wait for each and every failure reported:
        a task's own exception is re-raised as is, a lost worker or node as EvaluationError."""
        ray = self._ray
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=self.task_timeout_s)
                if not done:
                    raise EvaluationError(
                        f"no task finished within {self.task_timeout_s:g} s on the Ray cluster "
                        f"({len(pending)} of {len(refs)} pending): is it out of CPUs?"
                    )
                i = index[done[0]]
                try:
                    yield i, ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    # The controller's own failure (EvaluationError, ...): re-raise it as is.
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, Exception) else e) from None
                except ray.exceptions.RayError as e:  # a lost worker or node: report, never drop
                    raise EvaluationError(
                        f"{what(i)} failed on the Ray cluster: {type(e).__name__}: {e}"
                    ) from None
        finally:
            for ref in pending:
                ray.cancel(ref)


def make_executor(kind: str | Any, *, workers: int = 1, address: str | None = None) -> Any:
    if not isinstance(kind, str):
        return kind
    if kind == "local":
        if address:
            raise ConfigError("--ray-address needs --executor ray")
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, num_cpus=workers if workers > 1 else None)
    raise ConfigError(f"unknown executor {kind!r} (expected one of {', '.join(EXECUTORS)})")
