"""Joining or starting a Ray runtime, shared by the evaluation's Ray executor and the collector's
Ray launcher (neither imports the other); Ray itself is imported only when called."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from autotts.errors import ConfigError

LOOPBACK = "127.0.0.1"


def ray_cluster_constants() -> ModuleType:
    """Ray's module of import-time constants, whose ENABLE_RAY_CLUSTER `loopback_only` switches.

    The one use of Ray's private API here: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, into
    this constant, when `ray` is first imported, and offers no public way to change it afterwards
    (ray 2.60). tests/test_layers.py fails loudly if a Ray version drops the module or the name."""
    from ray._private import ray_constants

    return ray_constants


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` GCS address; None for "auto", "local" or ray://."""
    if "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Keep a Ray runtime started (or joined) from this process on 127.0.0.1.

    Ray replaces 127.0.0.1 by the machine's network address (for the node's own address and for a
    `127.0.0.1:PORT` cluster address) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and reads that
    variable once, when `ray` is first imported. So set the variable for the processes Ray starts
    now and the constant Ray already read in this one, check that it took, and restore both after.
    Usage statistics (which the runtime would otherwise send to Ray's server) are off unless the
    caller set RAY_USAGE_STATS_ENABLED."""
    import ray.util

    ray_constants = ray_cluster_constants()
    saved_env = {k: os.environ.get(k) for k in
                 ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        if ray.util.get_node_ip_address() != LOOPBACK:  # a Ray version that ignores the switch
            raise ConfigError(
                "cannot keep Ray on 127.0.0.1 with this Ray version: start Python with "
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, or give --ray-address of a running cluster"
            )
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait_reachable(host: str, port: int, timeout_s: float) -> None:
    """Fail fast, with a clear message, when nothing listens at the cluster address: Ray's own
    connection retries take many minutes to give up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"no Ray cluster answers at {host}:{port} within {timeout_s:g} s ({e})"
                ) from None
            time.sleep(0.5)


def connect_ray(address: str | None = None, *, num_cpus: int | None = None,
                connect_timeout_s: float = 60.0) -> bool:
    """Join the Ray cluster at `address` ("host:port", "auto" or "ray://host:10001"), or without
    one start a local runtime bound to 127.0.0.1 only; True if this call started a runtime.
    A process that already has a Ray runtime keeps it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray executor needs the 'ray' package: pip install 'autotts[ray]'"
        ) from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    hp = _host_port(address) if address else None
    if hp is not None:
        _wait_reachable(*hp, connect_timeout_s)
    if not address or address == "local":
        # "local" starts a fresh runtime even if another cluster is recorded on this host.
        with loopback_only():
            # Quiet: Ray's start-up notices would interleave with the command's own output.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     _node_ip_address=LOOPBACK, logging_level=logging.ERROR, **kwargs)
        return True
    try:
        if hp is not None and _is_loopback(hp[0]):
            # A head on this machine's loopback: join it as 127.0.0.1, never via the network.
            with loopback_only():
                ray.init(address=f"{LOOPBACK}:{hp[1]}", _node_ip_address=LOOPBACK, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
        # Most often authentication: a cluster with token auth needs RAY_AUTH_MODE=token and its
        # token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) in this process.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"could not join the Ray cluster at {address}: {first} (does it use token "
            "authentication? then set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN)"
        ) from None
    return False
