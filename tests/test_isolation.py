"""The sandbox's OS layer (autotts.sandbox.lockdown, docs/sandbox-isolation.md), tested as a
candidate that has obtained code execution would attack it.

A child imports numpy, locks itself down, then runs unrestricted Python (the real builtins, os,
socket, ctypes): it frees a descriptor (issue 21's attacker closed one), then tries to read,
create, change and delete a canary file, list directories, reach the test's files through /proc,
open TCP and UNIX sockets to listeners the test runs, execute programs, fork, and signal, ptrace
or read the memory of a sibling process of the same uid. Every attempt must fail, and the child
must still compute with numpy and write its result to its pipe. The suite runs as root and as an
unprivileged user (a root test drops to uid 65534 inside the child, before lock-down; a non-root
test is unprivileged already). A control run with every mechanism disabled shows that the same
attempts succeed there, so the failures above are the isolation's doing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autotts.sandbox import lockdown as iso
from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
NOBODY = 65534
MODES = ["root", "unprivileged"]

# The child: the test's arguments in argv[1] (JSON). Its stdout is its result pipe.
HOSTILE = r"""
import ctypes, json, os, signal, socket, subprocess, sys
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
import numpy as np
import numpy.fft, numpy.linalg, numpy.ma, numpy.random  # loaded lazily; nothing loads once locked down
from autotts.sandbox.lockdown import lockdown, seal

if args["drop"]:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
applied = lockdown(args["limits"], args["workdir"])
seal()  # as each forked batch of episodes does before candidate code

# ---- from here on: a candidate with code execution ------------------------------------------
os.close(0)  # a free descriptor number, as issue 21's attacker made one
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
canary, d, sub = args["canary"], args["dir"], args["subdir"]
sib, parent = args["sibling"], args["parent"]
results = {}


def attempt(name, fn):
    try:
        value = fn()
    except BaseException as e:
        results[name] = ["failed", f"{type(e).__name__}: {e}"[:200]]
    else:
        results[name] = ["succeeded", repr(value)[:200]]


def c_call(rc):
    if rc == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return rc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(address)
        s.sendall(b"leak")
    return "connected"


def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return s.sendto(b"leak", ("127.0.0.1", args["tcp_port"]))


def pair():
    a, b = socket.socketpair()
    a.close()
    b.close()


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def system(cmd):
    rc = os.system(cmd)
    if rc != 0:
        raise OSError(f"status {rc}")
    return rc


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def vm_read():
    buf = ctypes.create_string_buffer(64)
    local, remote = Iovec(ctypes.addressof(buf), 64), Iovec(0x400000, 64)
    return c_call(libc.process_vm_readv(sib, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))


def nonempty(value):
    if not value:
        raise OSError("nothing")
    return value


# Descriptors the parent leaked by mistake: a directory (the classic way out of a chroot) and a
# named file.
dfd, ffd = args["leaked_dir_fd"], args["leaked_file_fd"]
attempt("list a leaked directory descriptor", lambda: os.listdir(dfd))
attempt("open beneath a leaked directory", lambda: os.open("canary.txt", os.O_RDONLY, dir_fd=dfd))
attempt("read a leaked file descriptor", lambda: nonempty(os.pread(ffd, 100, 0)))
attempt("overwrite through a leaked file descriptor", lambda: nonempty(os.pwrite(ffd, b"x", 0)))
attempt("read canary", lambda: read(canary))
attempt("os.open canary", lambda: os.close(os.open(canary, os.O_RDONLY)))
attempt("write canary", lambda: os.close(os.open(canary, os.O_WRONLY | os.O_APPEND)))
attempt("create a file", lambda: open(os.path.join(d, "created.txt"), "w").close())
attempt("mkdir", lambda: os.mkdir(os.path.join(d, "made")))
attempt("symlink", lambda: os.symlink(canary, os.path.join(d, "link")))
attempt("hard link", lambda: os.link(canary, os.path.join(d, "hard")))
attempt("unlink canary", lambda: os.unlink(canary))
attempt("rename canary", lambda: os.rename(canary, canary + ".moved"))
attempt("rmdir", lambda: os.rmdir(sub))
attempt("truncate canary", lambda: os.truncate(canary, 0))
attempt("chmod canary", lambda: os.chmod(canary, 0o600))
attempt("utime canary", lambda: os.utime(canary, (0, 0)))
attempt("list the canary's directory", lambda: os.listdir(d))
attempt("list /", lambda: os.listdir("/"))
attempt("scandir /tmp", lambda: [e.name for e in os.scandir("/tmp")])
attempt("list /proc/self/fd", lambda: os.listdir("/proc/self/fd"))
attempt("canary via /proc/<parent>/root", lambda: read(f"/proc/{parent}/root{canary}"))
attempt("canary via /proc/self/root", lambda: read(f"/proc/self/root{canary}"))
attempt("parent's environ", lambda: read(f"/proc/{parent}/environ"))
attempt("parent's memory", lambda: read(f"/proc/{parent}/mem"))
attempt("/etc/hostname", lambda: read("/etc/hostname"))
attempt("TCP to 127.0.0.1", lambda: connect(socket.AF_INET, ("127.0.0.1", args["tcp_port"])))
attempt("UNIX socket file", lambda: connect(socket.AF_UNIX, args["unix_path"]))
attempt("abstract UNIX socket", lambda: connect(socket.AF_UNIX, "\0" + args["abstract"]))
attempt("UDP socket", udp)
attempt("socketpair", pair)
attempt("subprocess", lambda: subprocess.run(["/bin/true"], check=True))
attempt("os.system", lambda: system(f"touch {d}/by-system"))
attempt("posix_spawn", lambda: os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0))
attempt("fork", fork)
attempt("signal the sibling", lambda: os.kill(sib, signal.SIGTERM))
attempt("probe the parent with signal 0", lambda: os.kill(parent, 0))
attempt("signal the sibling's group", lambda: os.killpg(sib, signal.SIGTERM))
attempt("ptrace the sibling", lambda: c_call(libc.ptrace(16, sib, 0, 0)))  # PTRACE_ATTACH
attempt("process_vm_readv", vm_read)
attempt("pidfd_open", lambda: c_call(libc.syscall(434, sib, 0)))
attempt("io_uring_setup", lambda: c_call(libc.syscall(425, 8, ctypes.create_string_buffer(120))))
attempt("unshare a user namespace", lambda: c_call(libc.unshare(0x10000000)))
attempt("mount", lambda: c_call(libc.mount(b"none", b"/", b"tmpfs", 0, None)))
attempt("chroot", lambda: os.chroot("/"))
if args["execv"]:
    attempt("execv", lambda: os.execv("/bin/true", ["true"]))

rng = np.random.default_rng(0)
m = rng.normal(size=(40, 40))
computed = {
    "eig": float(np.linalg.eigvalsh(m @ m.T).sum()),
    "trace": float(np.trace(m @ m.T)),
    "fft": float(np.abs(np.fft.fft(np.arange(8.0))).sum()),
    "unique": np.unique([3, 1, 3, 2]).tolist(),
}
payload = {"applied": applied, "results": results, "computed": computed, "uid": os.getuid()}
data = json.dumps(payload).encode()
while data:
    data = data[os.write(1, data):]
"""


# ---- fixtures ----------------------------------------------------------------------------------


def _mkdtemp(prefix: str, owner: int | None) -> str:
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o777)
    if owner is not None and IS_ROOT:
        os.chown(d, owner, owner)
    return d


class Targets:
    """What the child attacks: a canary in a world-writable directory (so that only the
    isolation stops an unprivileged child), TCP and UNIX listeners, a sibling of its uid."""

    def __init__(self, uid: int | None) -> None:
        self.dir = _mkdtemp("autotts-canary-", None)
        self.sub = os.path.join(self.dir, "sub")
        os.mkdir(self.sub)
        os.chmod(self.sub, 0o777)
        self.canary = os.path.join(self.dir, "canary.txt")
        Path(self.canary).write_text("canary")
        os.chmod(self.canary, 0o666)
        self.stamp = os.stat(self.canary).st_mtime_ns
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.unix_path = os.path.join(self.dir, "sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen(8)
        self.abstract = f"autotts-test-{os.getpid()}-{time.monotonic_ns()}"
        self.abs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abs.bind("\0" + self.abstract)
        self.abs.listen(8)
        for s in (self.tcp, self.unix, self.abs):
            s.setblocking(False)
        self.sibling = subprocess.Popen(["sleep", "120"], start_new_session=True,
                                        **({"user": uid, "group": uid} if uid is not None
                                           else {}))

    def accepted(self) -> list[str]:
        got = []
        for name, s in (("tcp", self.tcp), ("unix", self.unix), ("abstract", self.abs)):
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            got.append(name)
            conn.close()
        return got

    def close(self) -> None:
        for s in (self.tcp, self.unix, self.abs):
            s.close()
        self.sibling.kill()
        self.sibling.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def targets() -> Iterator[Targets]:
    # The sibling runs as the uid candidate code runs as: nobody when this test is root (the
    # root case drops to it in lock-down, the unprivileged case before), else this user.
    t = Targets(NOBODY if IS_ROOT else None)
    yield t
    t.close()


def _skip_mode(mode: str) -> None:
    if mode == "root" and not IS_ROOT:
        pytest.skip("the root case needs a test run as root (CI runs as root)")
    found = iso.probe([])
    if not iso.is_strong(found):
        skip_or_fail(f"this platform allows no strong sandbox (isolation: {iso.describe(found)}; "
                     f"{found.get('notes') or found.get('probe_error')})")


def run_child(mode: str, targets: Targets, *, disable: list[str] | None = None,
              execv: bool = False, timeout: float = 60) -> dict[str, Any]:
    drop = mode == "unprivileged" and IS_ROOT
    work = _mkdtemp("autotts-sandbox-", NOBODY if drop else None)
    args = {"root": str(ROOT), "drop": drop, "workdir": work, "canary": targets.canary,
            "dir": targets.dir, "subdir": targets.sub, "sibling": targets.sibling.pid,
            "parent": os.getpid(), "tcp_port": targets.tcp.getsockname()[1],
            "unix_path": targets.unix_path, "abstract": targets.abstract, "execv": execv,
            "limits": {"cpu_seconds": 60, "memory_mb": 1024,
                       "isolation_disable": list(disable or [])}}
    dfd = os.open(targets.dir, os.O_RDONLY | os.O_DIRECTORY)
    ffd = os.open(targets.canary, os.O_RDWR)
    args.update(leaked_dir_fd=dfd, leaked_file_fd=ffd)
    try:
        p = subprocess.run([sys.executable, "-I", "-c", HOSTILE, json.dumps(args)], cwd=work,
                           env=iso.child_env(work), stdin=subprocess.PIPE, capture_output=True,
                           timeout=timeout, start_new_session=True, check=False,
                           pass_fds=(dfd, ffd))
    finally:
        os.close(dfd)
        os.close(ffd)
        shutil.rmtree(work, ignore_errors=True)
    assert p.stdout, f"no result (exit {p.returncode}): {p.stderr.decode()[-2000:]}"
    out = json.loads(p.stdout)
    out["returncode"] = p.returncode
    return out


# ---- the hostile suite -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_code_execution_reaches_no_file_socket_process_or_program(mode: str,
                                                                  targets: Targets) -> None:
    _skip_mode(mode)
    out = run_child(mode, targets)
    applied, results = out["applied"], out["results"]
    got_through = {k: v[1] for k, v in results.items() if v[0] != "failed"}
    assert not got_through, f"isolation {iso.describe(applied)} let through: {got_through}"
    assert len(results) >= 45
    # The host is as it was, the sibling alive, no listener reached.
    assert Path(targets.canary).read_text() == "canary"
    assert os.stat(targets.canary).st_mtime_ns == targets.stamp
    assert sorted(os.listdir(targets.dir)) == ["canary.txt", "sock", "sub"]
    assert targets.sibling.poll() is None
    assert targets.accepted() == []
    # ... and the child still computes and reports.
    c = out["computed"]
    assert c["eig"] == pytest.approx(c["trace"])
    assert c["fft"] > 0 and c["unique"] == [1, 2, 3]
    assert out["returncode"] == 0
    assert iso.is_strong(applied)
    if os.environ.get("CI", "").lower() == "true":  # CI's kernel allows every mechanism
        for key in ("mountns", "netns", "pidns", "utsns", "ipcns", "empty_root", "no_caps",
                    "no_new_privs", "seccomp", "landlock"):
            assert applied[key] is True, (key, applied)
        if mode == "root":
            assert applied["nobody"] is True and applied["userns"] is False
        else:
            assert applied["userns"] is True and applied["nobody"] is False


@pytest.mark.parametrize("mode", MODES)
def test_execv_fails_and_the_process_goes_on(mode: str, targets: Targets) -> None:
    """os.execv would replace the process (and its report with it): it must fail."""
    _skip_mode(mode)
    out = run_child(mode, targets, execv=True)
    assert out["results"]["execv"][0] == "failed"


@pytest.mark.parametrize("mode", MODES)
def test_each_layer_alone_keeps_the_host_out(mode: str, targets: Targets) -> None:
    """Namespaces alone, Landlock alone, seccomp alone: the host's files stay out of reach
    (defence in depth: one layer refused by a platform leaves the others). Root still becomes
    nobody each time: root's capabilities would undo any of them."""
    _skip_mode(mode)
    file_ops = ("read canary", "os.open canary", "write canary", "create a file", "mkdir",
                "unlink canary", "rename canary", "list the canary's directory",
                "canary via /proc/<parent>/root")
    for keep in ("namespaces", "landlock", "seccomp"):
        if keep == "landlock" and _landlock_abi() < 1:
            continue
        others = sorted(iso.DISABLE_NAMES - {keep, "nobody"})
        out = run_child(mode, targets, disable=others)
        results = out["results"]
        leaked = {k: results[k][1] for k in file_ops if results[k][0] != "failed"}
        assert not leaked, (keep, leaked)
        assert results["TCP to 127.0.0.1"][0] == "failed", keep
        if keep != "landlock":  # Landlock (ABI <= 7) does not cover connecting to a socket file
            assert results["UNIX socket file"][0] == "failed", keep
            assert iso.is_strong(out["applied"]), keep
        else:
            assert not iso.is_strong(out["applied"])
        assert Path(targets.canary).read_text() == "canary"
        assert set(targets.accepted()) <= {"unix"}


@pytest.mark.parametrize("mode", MODES)
def test_control_without_isolation_the_attacks_succeed(mode: str, targets: Targets) -> None:
    """With every mechanism disabled (a platform that allows none), the same code reads the
    canary after freeing a descriptor, lists directories and connects: the suite above fails
    for the isolation's reasons, not the test's."""
    _skip_mode(mode)
    out = run_child(mode, targets, disable=["all"])
    results = out["results"]
    same_uid = mode == "unprivileged" or not IS_ROOT  # (root without capabilities: not)
    for name in ("read canary", "list the canary's directory", "TCP to 127.0.0.1",
                 "UNIX socket file") + (("signal the sibling",) if same_uid else ()):
        assert results[name][0] == "succeeded", (name, results[name])
    assert not iso.is_strong(out["applied"])
    assert "tcp" in targets.accepted()


def _landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return int(libc.syscall(444, None, 0, 1))


# ---- the process the sandbox's parent sees ------------------------------------------------------

SIMPLE = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
import numpy
from autotts.sandbox.lockdown import lockdown
if args["drop"]:
    os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
applied = lockdown(args["limits"], args["workdir"])
os.write(1, (json.dumps(applied) + "\n").encode())
what = args["then"]
if what == "exit":
    os._exit(7)
if what == "spin":
    while True:
        pass
if what == "sleep":
    while True:
        time.sleep(1)
"""


def start_simple(mode: str, then: str, cpu: int = 60) -> tuple[subprocess.Popen, str]:
    drop = mode == "unprivileged" and IS_ROOT
    work = _mkdtemp("autotts-sandbox-", NOBODY if drop else None)
    args = {"root": str(ROOT), "drop": drop, "workdir": work, "then": then,
            "limits": {"cpu_seconds": cpu, "memory_mb": 1024}}
    p = subprocess.Popen([sys.executable, "-I", "-c", SIMPLE, json.dumps(args)], cwd=work,
                         env=iso.child_env(work), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    return p, work


@pytest.mark.parametrize("mode", MODES)
def test_exit_status_cpu_limit_and_group_kill_as_without_a_pid_namespace(mode: str) -> None:
    """The parent sees one process: its exit status, SIGXCPU at the CPU limit, and a kill of
    its process group that ends every process of the sandbox."""
    _skip_mode(mode)
    p, work = start_simple(mode, "exit")
    try:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 7, err.decode()[-2000:]
        assert json.loads(out.splitlines()[0])["pidns"] is True
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p, work = start_simple(mode, "spin", cpu=1)
    try:
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGXCPU
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p, work = start_simple(mode, "sleep")
    try:
        assert p.stdout is not None and p.stdout.readline()
        members = iso.live_sandbox_processes(p.pid)
        assert len(members) == 2  # the waiting parent and the sandbox itself
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while iso.live_sandbox_processes(p.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert iso.live_sandbox_processes(p.pid) == []
        # The sandbox's end of every pipe is closed: the parent sees EOF.
        assert p.stdout.read() == b""
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(work, ignore_errors=True)


# ---- probe, is_strong, the refusal -------------------------------------------------------------


def test_probe_measures_this_platform() -> None:
    found = iso.probe([])
    assert iso.is_strong(found), found
    assert found["fs_blocked"] and found["net_blocked"] and found["fork_blocked"]
    assert 0 < found["lockdown_ms"] < found["start_ms"]
    assert iso.probe([]) == found  # cached
    # Without namespaces (user namespaces refused): Landlock and seccomp still hold.
    assert iso.is_strong(iso.probe(["namespaces"]))
    weak = iso.probe(["all"])
    assert not iso.is_strong(weak)
    assert weak["fs_blocked"] is False and weak["net_blocked"] is False


def test_is_strong() -> None:
    assert not iso.is_strong({})
    assert not iso.is_strong({"netns": True})  # the network, not the files
    assert not iso.is_strong({"empty_root": True})  # the files, not the network
    # Without seccomp, batches must have kernel state of their own (or one leaves keys, System
    # V objects or a process for the next).
    assert not iso.is_strong({"empty_root": True, "netns": True})
    assert iso.is_strong({"empty_root": True, "netns": True, "batchns": True})
    # Landlock and a network namespace leave the host's UNIX socket files in reach.
    assert not iso.is_strong({"landlock": True, "netns": True, "batchns": True})
    assert iso.is_strong({"landlock": True, "netns": True, "empty_root": True, "batchns": True})
    assert iso.is_strong({"seccomp": True})
    assert not iso.is_strong({"seccomp": True, "fs_blocked": False})
    assert not iso.is_strong({"seccomp": True, "net_blocked": False})
    assert not iso.is_strong({"seccomp": True, "probe_error": "no child"})
    assert iso.describe({}) == "none"
    assert iso.describe({"netns": True, "seccomp": True, "notes": "x"}) == "netns, seccomp"


def test_disable_names_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(iso.DISABLE_ENV, "seccomp, Landlock,bogus")
    assert iso.disabled_from_env() == ["landlock", "seccomp"]
    monkeypatch.setenv(iso.DISABLE_ENV, "all")
    assert iso.disabled_from_env() == sorted(iso.DISABLE_NAMES)
    monkeypatch.delenv(iso.DISABLE_ENV)
    assert iso.disabled_from_env() == []


def test_require_strong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(iso.DISABLE_ENV, "all")
    with pytest.raises(iso.WeakSandboxError) as e:
        iso.require_strong(False)
    msg = str(e.value)
    assert "\n" not in msg and "--allow-weak-sandbox" in msg
    assert not iso.is_strong(iso.require_strong(True))
    monkeypatch.delenv(iso.DISABLE_ENV)
    assert iso.is_strong(iso.require_strong(False))


def _cli(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTTS_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "autotts", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_eval_and_discover_refuse_a_weak_sandbox(tmp_path: Path) -> None:
    """On a platform that allows no isolation (simulated), `eval --sandbox` and `discover` stop
    before any candidate code runs (or any model is asked), with a one-line error."""
    from discover_helpers import make_env

    env = make_env(tmp_path)
    weak = {iso.DISABLE_ENV: "all", "PYTHONPATH": str(ROOT)}
    res = _cli(["eval", "--controller", "sc", "--env", str(env), "--betas", "0.5", "--sandbox"],
               weak, tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and \
        "--allow-weak-sandbox" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    # In-process evaluation runs no candidate code: no refusal.
    res = _cli(["eval", "--controller", "sc", "--env", str(env), "--betas", "0.5"], weak,
               tmp_path)
    assert res.returncode == 0, res.stderr
    res = _cli(["discover", "--env", str(env), "--run-dir", str(tmp_path / "run"), "--model",
                "m", "--base-url", "http://127.0.0.1:9", "--rounds", "1"],
               {**weak, "AUTOTTS_API_KEY": "k"}, tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-weak-sandbox" in lines[0], res.stderr
    assert not (tmp_path / "run" / "requests.jsonl").exists()


def test_the_discovery_run_directory_records_the_isolation(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from discover_helpers import GOOD, config, make_env, reply

    from autotts.discover import run_discovery
    from autotts.discover.fakeserver import FakeOpenAI

    monkeypatch.setenv("AUTOTTS_CACHE_HOME", str(tmp_path / "cache"))
    env = make_env(tmp_path)
    run_dir = tmp_path / "run"
    with FakeOpenAI([reply(GOOD)]) as server:
        summary = run_discovery(config(env, run_dir, server.url, rounds=1))
    results = json.loads((run_dir / "rounds" / "0001" / "c1" / "results.json").read_text())
    assert summary["allow_weak_sandbox"] is False
    for applied in (results["isolation"], summary["isolation"]):
        assert applied and all(isinstance(v, bool) for v in applied.values()), applied
        assert applied.get("netns") is True  # the previous lock-down's keys or these
