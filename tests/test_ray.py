"""The Ray executor gives the local executor's results bit for bit, in a local runtime and on a
head started by the test, reports task failures, and launches collection shards as Ray tasks.

Everything stays on 127.0.0.1 (asserted from the sockets of every process involved), every wait
is bounded, and the test stops only what it started, by process session: never `ray stop`, which
would stop every Ray runtime on the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from autotts.evaluate import EvalProtocol, EvaluationError, evaluate
from autotts.executors import RayExecutor
from autotts.sandbox import SandboxError, evaluate_sandboxed
from autotts.store import open_store, to_autotts_json, write_store
from tests.conftest import branch, make_store, require_module

ray = require_module("ray")  # in the dev extra: CI must run these tests, never skip them

pytestmark = pytest.mark.slow
TASK_TIMEOUT_S = 60  # no work unit may take longer: a broken cluster fails, it does not hang
REPO = Path(__file__).resolve().parent.parent


# ---- what is listening where ---------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 'state' on: state ppid pgrp session


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st:
            children.setdefault(int(st[1]), []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _session(sid: int) -> set[int]:
    """Live (non-zombie) processes of the session the test created for a head."""
    return {p for p in _all_pids() if (st := _stat(p)) and int(st[3]) == sid and st[0] != "Z"}


def _addr(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = bytes.fromhex(hexaddr.split(":")[0])
    # /proc/net prints each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(host[i:i + 4][::-1] for i in range(0, len(host), 4))
    return ipaddress.ip_address(raw)


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def inet_sockets(pids: Iterable[int]) -> list[dict[str, object]]:
    """Every TCP/UDP socket the processes hold: protocol, pid, local and remote address, state."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = pid
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[9] in owner:
                found.append({"proto": proto, "pid": owner[f[9]], "local": _addr(f[1]),
                              "remote": _addr(f[2]), "listening": f[3] == "0A"})
    return found


def assert_loopback_only(pids: Iterable[int]) -> int:
    """Every socket bound to and connected to loopback only; returns how many listen."""
    socks = inet_sockets(pids)
    bad = [s for s in socks
           if not _is_loopback(s["local"])  # type: ignore[arg-type]
           or not (_is_loopback(s["remote"]) or s["remote"].is_unspecified)]  # type: ignore[union-attr]
    assert not bad, f"sockets off loopback: {bad}"
    return sum(bool(s["listening"]) for s in socks)


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three different stores on disk (store k has 12 + k branches per question)."""
    root = tmp_path_factory.mktemp("stores")
    dirs = []
    for k in range(3):
        st = make_store(
            [
                (g, [branch([a, g, g][: 1 + (i + k) % 3], 10 + 7 * i + k, g if (i + k) % 3 else a)
                     for i in range(12 + k)])
                for g, a in (("A", "B"), ("C", "A"), ("B", "B"), ("A", "C"))
            ],
            model=f"m{k}",
        )
        dirs.append(str(write_store(st, root / f"m{k}")))
    return dirs


@pytest.fixture(scope="module")
def runtime():
    """One local runtime (in this process, on 127.0.0.1) for the in-process tests."""
    ex = RayExecutor(num_cpus=2, connect_timeout_s=60, task_timeout_s=TASK_TIMEOUT_S)
    yield ex
    ex.close()


def _rows(result_rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    keys = ("store", "beta", "accuracy", "accuracy_se", "tokens", "tokens_se")
    return [tuple(r[k] for k in keys) for r in result_rows]


# ---- in-process runtime ----------------------------------------------------------------------


@pytest.mark.parametrize("controller", ["parallel_probe", "asc"])
def test_local_runtime_matches_local_executor(runtime, store_dirs, controller):
    proto = EvalProtocol(draws=6)
    local = evaluate(controller, store_dirs, [0.0, 0.5, 1.0], proto, workers=2)
    remote = evaluate(controller, store_dirs, [0.0, 0.5, 1.0], proto, executor=runtime)
    assert _rows(remote.rows) == _rows(local.rows)
    assert len({r[0] for r in _rows(local.rows)}) == 3


def test_local_runtime_stays_on_loopback(runtime, store_dirs):
    evaluate("sc", store_dirs, [0.5], EvalProtocol(draws=2), executor=runtime)  # workers are up
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    listening = assert_loopback_only(_descendants(os.getpid()))
    assert listening >= 3  # GCS, raylet and workers: the check saw the runtime's sockets


CRASHES_ON_M1 = '''
class CrashOnSecondStore:
    NAME = "crash_on_m1"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        if ep.pool_size == 13:  # only store m1 has 13 branches per question
            raise RuntimeError("boom")
        return int(ep.read_new_many(1)[0])
'''


def test_task_failure_is_reported(runtime, store_dirs, tmp_path: Path):
    path = tmp_path / "crash.py"
    path.write_text(CRASHES_ON_M1)
    with pytest.raises(EvaluationError, match=r"crash_on_m1 on m1/toy, question 0.*boom"):
        evaluate(str(path), store_dirs, [0.0], EvalProtocol(draws=2), executor=runtime)
    # The string form joins this process's runtime; recorded failures are counted per store.
    recorded = evaluate(str(path), store_dirs, [0.0], EvalProtocol(draws=2), executor="ray",
                        on_error="record")
    assert [r["errors"] for r in recorded.rows] == [0, 8, 0]


def test_stuck_cluster_fails_within_the_task_deadline(runtime, store_dirs):
    # Units that need more CPUs than the cluster has are never scheduled: a bounded failure.
    stuck = RayExecutor(task_timeout_s=2)
    stuck._remote = stuck._remote.options(num_cpus=64)
    t = time.monotonic()
    with pytest.raises(EvaluationError, match="no task finished within 2 s"):
        evaluate("sc", store_dirs, [0.5], EvalProtocol(draws=2), executor=stuck)
    assert time.monotonic() - t < 30


# ---- candidates: sandbox processes started by Ray workers -------------------------------------


def _sandbox_rows(ev) -> list[tuple[object, ...]]:
    return _rows(ev.rows) + [tuple(sorted(e.items())) for e in ev.episodes]


@pytest.mark.parametrize("controller", ["parallel_probe", "asc"])
def test_sandboxed_on_ray_matches_local_sandbox(runtime, store_dirs, controller):
    proto = EvalProtocol(draws=5)
    kw = dict(episodes=True, traces=True)
    local = evaluate_sandboxed(controller, store_dirs, [0.0, 0.5, 1.0], proto, workers=2, **kw)
    on_ray = evaluate_sandboxed(controller, store_dirs, [0.0, 0.5, 1.0], proto,
                                executor=runtime, **kw)
    assert _sandbox_rows(on_ray) == _sandbox_rows(local)
    assert on_ray.traces == local.traces
    assert _rows(on_ray.rows) == _rows(evaluate(controller, store_dirs, [0.0, 0.5, 1.0],
                                                proto).rows)
    assert len(on_ray.pids) >= len(store_dirs)  # at least one sandbox process per store


def test_sandboxed_failure_on_ray_is_a_verdict(runtime, store_dirs, tmp_path: Path):
    noisy = CRASHES_ON_M1.replace("        if ep.pool_size", "        print('hello')\n"
                                  "        if ep.pool_size")
    with pytest.raises(SandboxError) as err:
        evaluate_sandboxed(noisy, store_dirs, [0.0], EvalProtocol(draws=2), executor=runtime)
    v = err.value.verdict
    assert v.kind == "exception" and "boom" in v.message and v.context["store"] == "m1/toy"
    recorded = evaluate_sandboxed(noisy, store_dirs, [0.0], EvalProtocol(draws=2),
                                  executor=runtime, on_error="record")
    assert [r["errors"] for r in recorded.rows] == [0, 8, 0]
    assert "hello" in recorded.stdout  # what the candidate printed comes back from the workers


def test_discovery_on_ray_matches_local(runtime, tmp_path: Path, monkeypatch):
    """A discovery round with three candidates, evaluated through the Ray executor (seeds as
    Ray work units, candidates in sandbox processes started by Ray workers), writes the same
    bytes as the same round on local processes: in this process (joining its runtime), and as
    `autotts discover --executor ray` (starting a runtime of its own, with the seeds cached, so
    that the first use of Ray comes while the candidates are evaluated)."""
    from discover_helpers import (
        BROKEN,
        GOOD,
        GOOD_B,
        assert_same_rounds,
        cli_env,
        config,
        make_env,
        several,
    )

    from autotts.discover import run_discovery
    from autotts.discover.fakeserver import FakeOpenAI

    env = make_env(tmp_path / "env")
    script = [several(GOOD, BROKEN, GOOD_B)]
    spread = []
    real = RayExecutor.map_stores

    def counting(self, fn, stores, calls):
        spread.append(len(calls))
        return real(self, fn, stores, calls)

    monkeypatch.setattr(RayExecutor, "map_stores", counting)
    dirs = {}
    # A baseline cache per executor, so the Ray run computes its seeds through Ray too.
    for executor in ("local", "ray"):
        monkeypatch.setenv("AUTOTTS_CACHE_HOME", str(tmp_path / f"cache-{executor}"))
        dirs[executor] = tmp_path / f"run-{executor}"
        with FakeOpenAI(script) as server:
            summary = run_discovery(config(env, dirs[executor], server.url, rounds=1,
                                           candidates=3, workers=2, executor=executor))
        assert summary["status"] == "complete"
    assert spread and all(n >= 2 for n in spread)  # sweeps, traces and held-out, spread out
    assert (dirs["ray"] / "seeds.json").read_bytes() == (dirs["local"] / "seeds.json").read_bytes()
    assert_same_rounds(dirs["local"], dirs["ray"])
    assert ray.is_initialized()  # the run joined this process's runtime and left it running

    dirs["cli"] = tmp_path / "run-cli"
    with FakeOpenAI(script) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "autotts", "discover", "--env", str(env), "--run-dir",
             str(dirs["cli"]), "--model", "fake-model", "--base-url", server.url, "--rounds", "1",
             "--candidates", "3", "--workers", "2", "--executor", "ray"],
            capture_output=True, text=True, cwd=REPO, timeout=240,
            env={**os.environ, **cli_env(server.url),
                 "AUTOTTS_CACHE_HOME": str(tmp_path / "cache-local")},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_rounds(dirs["local"], dirs["cli"])


# ---- collection shards as Ray tasks ----------------------------------------------------------


def _questions(path: Path, n: int) -> Path:
    path.write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
        for i in range(n)
    ))
    return path


def test_collect_shards_as_ray_tasks(runtime, tmp_path: Path):
    """The launcher runs `autotts collect --backend fake --shard i/3` as three Ray tasks
    (num_gpus=0 here) and merges them; the store equals one unsharded collection."""
    from autotts.collect import CollectConfig, ProtocolConfig, collect
    from autotts.collect.ray_shards import launch_collect, main

    qs = _questions(tmp_path / "qs.jsonl", 7)
    args = ["--model", "fake-model", "--questions", str(qs), "--backend", "fake", "--n", "4",
            "--delta", "50", "--answers", "exact"]
    merged = launch_collect(args, tmp_path / "sharded", 3, num_gpus=0, timeout_s=60)
    whole = collect(CollectConfig(model="fake-model", questions=str(qs), out=tmp_path / "whole",
                                  protocol=ProtocolConfig(n=4, delta=50), backend="fake",
                                  answers="exact")).store
    assert whole is not None
    assert to_autotts_json(open_store(merged)) == to_autotts_json(open_store(whole))
    assert open_store(merged).num_questions == 7
    # A failing shard is reported with its command's own message, not lost (here through the
    # launcher's command line, which exits with it).
    with pytest.raises(SystemExit, match=r"(?si)shard 0/2 exited with 2.*no such option.*"
                                         r"shard 1/2 exited with 2"):
        main(["--shards", "2", "--num-gpus", "0", "--timeout", "60", "--out",
              str(tmp_path / "bad"), "--", *args, "--no-such-option"])


# ---- a head started by the test ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(ok: Callable[[], bool], proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert proc.poll() is None, f"{what}: the process exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.5)


def stop_session(proc: subprocess.Popen, grace_s: float = 10.0) -> set[int]:
    """SIGTERM every process of the session `proc` leads (the head and everything it started,
    Ray workers included: they get process groups of their own but stay in the session), wait a
    bounded time, SIGKILL what is left. Returns what survived even that (should be nothing)."""
    pids = _session(proc.pid)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is None:
                time.sleep(0.2)
            pids = _session(proc.pid)
            if not pids:
                break
            time.sleep(0.2)
        if not pids:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return pids


def test_head_on_loopback_matches_local_executor(store_dirs, tmp_path: Path):
    port = _free_port()
    # The settings that keep a head and its drivers on loopback, with token authentication:
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 stops Ray from replacing 127.0.0.1 by the machine's
    # network address (head and driver read it at import); a token of the test's own instead
    # of ~/.ray/auth_token.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    # A short temp dir of its own: Ray's Unix socket paths must fit in 107 bytes, and the head's
    # "current cluster" file lands there instead of /tmp/ray.
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    log = tmp_path / "head.log"
    with open(log, "wb") as f:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
             f"--temp-dir={temp}"],
            env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
    # One deadline for the whole test: a broken head or driver fails it within about 2 minutes.
    deadline = time.monotonic() + 130
    try:
        _wait_until(lambda: b"Ray runtime started" in log.read_bytes(), head, 60, "ray start")
        address = f"127.0.0.1:{port}"
        proto = EvalProtocol(draws=4)
        # The drivers are `autotts eval` processes, as a user runs them: Ray reads RAY_AUTH_MODE
        # when it is imported, and this process already runs a runtime of its own. With
        # --sandbox, the head's workers start the sandbox processes.
        for controller, extra in (("parallel_probe", []), ("cmc", []), ("asc", ["--sandbox"])):
            out = tmp_path / f"{controller}.json"
            driver = subprocess.run(
                [sys.executable, "-m", "autotts", "eval", "--controller", controller,
                 *[a for d in store_dirs for a in ("--store", d)], "--betas", "0,1",
                 "--draws", str(proto.draws), "--executor", "ray", "--ray-address", address,
                 "--json", str(out), *extra],
                env=env, cwd=REPO, capture_output=True, text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-2000:]
            local = evaluate(controller, store_dirs, [0.0, 1.0], proto)
            assert _rows(json.loads(out.read_text())) == _rows(local.rows)
        # The head's processes (GCS, raylet, agents, the workers that ran the tasks) listen and
        # talk on loopback only; the driver's connections are among theirs.
        assert assert_loopback_only(_session(head.pid)) >= 3, log.read_text()[-2000:]
    finally:
        survivors = stop_session(head)
        shutil.rmtree(temp, ignore_errors=True)
    assert not survivors, f"processes of the test's head still running: {survivors}"
