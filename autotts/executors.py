"""Where evaluation work units run: local processes (default) or a Ray cluster.

Both executors run the same `run_unit` on the same gold-free store arrays and yield the same
`BlockResult`s, so results are identical bit for bit; only throughput differs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from autotts.errors import ConfigError
from autotts.evaluate import BlockResult, Job, Unit, _Questions, run_unit
from autotts.store import ReplayData

EXECUTORS = ("local", "ray")

# Per-process state of local workers: the stores (inherited through fork) and the current job.
_LOCAL: dict[str, Any] = {}


def _local_init(stores: Sequence[ReplayData] | None, job: Job) -> None:
    if stores is not None:  # spawn: stores arrive pickled once per worker, not once per unit
        _LOCAL["questions"] = [_Questions(d) for d in stores]
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
        questions = [_Questions(d) for d in stores]
        if self.parallelism == 1 or len(units) == 1:
            for unit in units:
                yield unit, run_unit(questions[unit[0]], job, unit)
            return
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


_RAY_CACHE: dict[str, _Questions] = {}


def _ray_run(data: ReplayData, data_key: str, job: Job, unit: Unit) -> tuple[Unit, BlockResult]:
    # A Ray worker process serves many tasks: prepare each store's layout once per process.
    questions = _RAY_CACHE.get(data_key)
    if questions is None:
        questions = _RAY_CACHE[data_key] = _Questions(data)
    return unit, run_unit(questions, job, unit)


class RayExecutor:
    """Work units as Ray tasks. Each store's arrays go into the object store once (workers on a
    node map them zero-copy), and the controller travels as source, so remote hosts need no
    checkout. Connects to `address` (e.g. "auto" or "ray://host:10001"), else starts a local
    runtime bound to 127.0.0.1."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "the Ray executor needs the 'ray' package: pip install 'autotts[ray]'"
            ) from None
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                # "local" starts a fresh runtime even if another cluster is recorded on this host.
                kwargs["address"] = "local"
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
                # Keep a local runtime on loopback, never on the machine's public interfaces.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                kwargs["_node_ip_address"] = "127.0.0.1"
            ray.init(**kwargs)
        self.parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(_ray_run)

    def run(self, stores: Sequence[ReplayData], job: Job, units: list[Unit]
            ) -> Iterator[tuple[Unit, BlockResult]]:
        ray = self._ray
        refs = [ray.put(d) for d in stores]
        keys = [f"{d.name}:{id(d)}:{os.getpid()}" for d in stores]
        job_ref = ray.put(job)
        pending = [self._remote.remote(refs[u[0]], keys[u[0]], job_ref, u) for u in units]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            for ref in pending:
                ray.cancel(ref)
            raise cause from None


def make_executor(kind: str | Any, *, workers: int = 1, address: str | None = None) -> Any:
    if not isinstance(kind, str):
        return kind
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, num_cpus=workers if workers > 1 else None)
    raise ConfigError(f"unknown executor {kind!r} (expected one of {', '.join(EXECUTORS)})")
