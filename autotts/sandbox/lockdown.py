"""OS-level isolation of a sandbox process: what the kernel enforces once candidate code runs
(docs/sandbox-isolation.md).

`lockdown(limits, workdir)` is called in the sandbox process after it has read its request and
imported everything it will need, right before candidate code runs. It applies, each where the
platform allows it, as root and as an ordinary user alike:

  * namespaces: user (when not root), mount, network, PID, UTS, IPC;
  * an empty root: a read-only, empty tmpfs mounted on `workdir` becomes `/` (pivot_root, the old
    root detached; chroot where pivot_root is refused);
  * no privileges: `nobody` when started as root, else every capability dropped; no new privileges;
  * descriptors: directories, devices and network sockets inherited by mistake are replaced, and
    every free descriptor number below the highest is filled (RLIMIT_NOFILE = highest + 1);
  * Landlock with no rule: no file system access by path, no TCP, no signals or abstract UNIX
    sockets beyond the sandbox;
  * a seccomp allow-list: computation, memory, time, randomness, signals of its own, and I/O on
    descriptors it already has; everything else (open, socket, execve, fork, kill, ptrace, mount,
    unlink, ...) fails with EPERM;
  * rlimits: CPU, address space, no core dumps, no file writes, no new processes or descriptors;
  * where no seccomp filter binds the batches the zygote forks: a user, an IPC and a network
    namespace of each batch's own (seal()), a shared session keyring that takes no key, and no
    process of a batch left alive after it (end_leftovers); `batchns` where this holds.

It returns what applied. `probe()` measures what this platform allows by starting a small child
that locks itself down and tries the forbidden operations; `is_strong()` says whether that keeps
the host file system and the network out; `require_strong()` refuses to go on without it unless
the user accepted a weak sandbox.

AUTOTTS_SANDBOX_DISABLE (a comma-separated list of namespaces, landlock, seccomp, nobody, or all)
turns mechanisms off, to see how a platform that lacks them behaves; `probe()` honours it, and
`disabled_from_env()` gives the list for the sandbox processes' limits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autotts.errors import WeakSandboxError

DISABLE_ENV = "AUTOTTS_SANDBOX_DISABLE"
DISABLE_NAMES = frozenset({"namespaces", "landlock", "seccomp", "nobody"})
NOBODY = 65534

# What lockdown() reports, each True when it applied.
KEYS = ("userns", "mountns", "netns", "pidns", "utsns", "ipcns", "empty_root", "nobody",
        "no_caps", "no_new_privs", "landlock", "seccomp", "batchns")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE, MNT_DETACH = 1 << 14, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203,
               "s390x": 217}
_LANDLOCK_CREATE_RULESET, _LANDLOCK_RESTRICT_SELF = 444, 446  # the same on every architecture
# keyctl(2) (no libc wrapper without libkeyutils): its number where it is known
_KEYCTL = {"x86_64": 250, "aarch64": 219, "arm64": 219, "riscv64": 219, "loongarch64": 219}
_KEYCTL_GET_KEYRING_ID, _KEYCTL_JOIN_SESSION_KEYRING, _KEYCTL_SETPERM = 0, 1, 5
_KEY_SPEC_SESSION_KEYRING = -3
_KEY_POS_SEARCH = 0x08000000  # its possessors may search it (an empty keyring); no other right


class _Libc:
    """The few libc calls lockdown needs, each returning 0 or the errno."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.syscall.restype = ctypes.c_long
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                   ctypes.c_ulong, ctypes.c_char_p]

    def call(self, name: str, *args: Any) -> int:
        ctypes.set_errno(0)
        if getattr(self.lib, name)(*args) != -1:
            return 0
        return ctypes.get_errno() or errno.EPERM

    def syscall(self, nr: int, *args: Any) -> int:
        ctypes.set_errno(0)
        return int(self.lib.syscall(nr, *args))


def disabled_from_env() -> list[str]:
    """The mechanisms AUTOTTS_SANDBOX_DISABLE turns off (for tests and for seeing how a weaker
    platform behaves); 'all' is every one."""
    raw = os.environ.get(DISABLE_ENV, "")
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    if "all" in names:
        return sorted(DISABLE_NAMES)
    return sorted(names & DISABLE_NAMES)


def _disabled(limits: dict[str, Any]) -> frozenset[str]:
    d = limits.get("isolation_disable") or ()
    names = {d} if isinstance(d, str) else set(d)
    return frozenset(DISABLE_NAMES if "all" in names else names & DISABLE_NAMES)


# ---- what the process holds before lock-down --------------------------------------------------


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _open_fds() -> list[int]:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(256)]
    fds = []
    for n in names:
        with contextlib.suppress(OSError):
            os.fstat(int(n))
            fds.append(int(n))
    return sorted(fds)


def _harmless_fd(fd: int) -> bool:
    """Pipes, AF_UNIX sockets (connected ones: no socket can be made or connected once locked
    down), anonymous inodes, files with no name (memfds, unlinked temporary files) and /dev/null
    stay; a directory (a way back into the host's tree), a named file (its contents, and its
    bytes to overwrite), any other device (a terminal) or a network socket does not."""
    try:
        st = os.fstat(fd)
    except OSError:
        return True
    mode = st.st_mode
    if stat.S_ISFIFO(mode) or stat.S_IFMT(mode) == 0:
        return True
    if stat.S_ISREG(mode):
        return st.st_nlink == 0
    if stat.S_ISCHR(mode):
        return st.st_rdev == os.makedev(1, 3)  # /dev/null
    if stat.S_ISSOCK(mode):
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            return False
        try:
            return s.family == socket.AF_UNIX
        finally:
            s.detach()
    return False


def _sanitize_fds(fds: list[int]) -> int:
    """Replace the descriptors that must not stay (see _harmless_fd) by the read end of an
    empty pipe; the number of replaced descriptors."""
    bad = [fd for fd in fds if not _harmless_fd(fd)]
    if not bad:
        return 0
    r, w = os.pipe()
    os.close(w)
    for fd in bad:
        os.dup2(r, fd, inheritable=True)
    if r not in fds:
        os.close(r)
    return len(bad)


# ---- namespaces and the empty root -------------------------------------------------------------


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _unshare(libc: _Libc, root: bool, applied: dict[str, Any], notes: list[str]) -> None:
    """New namespaces, from the most to the fewest: all six, all but PID, network only."""
    user = 0 if root else CLONE_NEWUSER
    ladder = [CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID,
              CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC, CLONE_NEWNET]
    flags, err = 0, 0
    for f in ladder:
        err = libc.call("unshare", user | f)
        if err == 0:
            flags = user | f
            break
        notes.append(f"unshare {f | user:#x}: {errno.errorcode.get(err, err)}")
    if not flags:
        return
    applied.update(userns=bool(flags & CLONE_NEWUSER), mountns=bool(flags & CLONE_NEWNS),
                   netns=bool(flags & CLONE_NEWNET), pidns=bool(flags & CLONE_NEWPID),
                   utsns=bool(flags & CLONE_NEWUTS), ipcns=bool(flags & CLONE_NEWIPC))
    if flags & CLONE_NEWUSER:
        # Inside, this process is root of its own namespace (and nothing outside it): its
        # capabilities there build the sandbox, and are dropped before candidate code runs.
        uid, gid = os.geteuid(), os.getegid()
        try:
            with contextlib.suppress(OSError):
                libc.lib.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # else /proc/self is root's
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
        except OSError as e:
            notes.append(f"uid map: {e.strerror}")
    if flags & CLONE_NEWUTS:
        name = b"sandbox"
        if libc.call("sethostname", name, len(name)):
            notes.append("sethostname failed")


def _empty_root(libc: _Libc, workdir: str, applied: dict[str, Any], notes: list[str]) -> None:
    """Make an empty, read-only tmpfs on `workdir` the root, and detach the host's tree."""
    if applied["mountns"]:
        err = libc.call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
        if err == 0:
            err = libc.call("mount", b"none", os.fsencode(workdir), b"tmpfs",
                            MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                            b"size=4k,nr_inodes=4,mode=0555")
        nr = _PIVOT_ROOT.get(platform.machine())
        if err == 0 and nr is not None:
            os.chdir(workdir)
            if libc.syscall(nr, b".", b".") == 0:
                err = libc.call("umount2", b".", MNT_DETACH)
                os.chdir("/")
                if err == 0:
                    applied["empty_root"] = True
                    return
                notes.append(f"umount old root: {errno.errorcode.get(err, err)}")
            else:
                notes.append(f"pivot_root: {errno.errorcode.get(ctypes.get_errno(), '?')}")
        elif err:
            notes.append(f"mount: {errno.errorcode.get(err, err)}")
    # chroot: as root, or with the capabilities of a user namespace; the old root stays
    # mounted but out of reach (no capability to chroot again, no directory descriptor).
    try:
        os.chdir(workdir)
        os.chroot(".")
        os.chdir("/")
        applied["empty_root"] = True
    except OSError as e:
        notes.append(f"chroot: {e.strerror}")


def _drop_privileges(libc: _Libc, root: bool, applied: dict[str, Any], no_nobody: bool) -> None:
    if root and not no_nobody:
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)  # clears every capability
            applied["nobody"] = True
        except OSError:
            pass
    applied["no_caps"] = _drop_capabilities(libc) and (os.geteuid() != 0 or applied["userns"])


def _drop_capabilities(libc: _Libc) -> bool:
    """capset(2), version 3: no effective, permitted or inheritable capability."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    return libc.call("capset", header, data) == 0


# ---- batches without a seccomp filter: kernel state of their own -----------------------------

_LIBC: _Libc | None = None  # made by lockdown(), in the zygote: its batches use it as it is
_KEYCTL_NR = _KEYCTL.get(platform.machine())
# The zygote's session keyring, joined by lockdown() (its serial; 0 where the kernel has no
# keys), and whether each batch isolates itself in seal() (no seccomp filter binds it there,
# and lockdown() tried it) and the zygote ends every other process of its PID namespace after
# each batch (end_leftovers).
_SESSION_KEYRING: int | None = None
_BATCH_NS = False
_END_OTHERS = False


def _keyctl(libc: _Libc, *args: int | None) -> int:
    """keyctl(2); its result, or -errno."""
    if _KEYCTL_NR is None:
        return -errno.ENOSYS
    r = libc.syscall(ctypes.c_long(_KEYCTL_NR),
                     *(ctypes.c_long(0 if a is None else a) for a in args))
    return r if r >= 0 else -(ctypes.get_errno() or errno.EPERM)


def _own_session_keyring(libc: _Libc) -> int | None:
    """Join a new, empty session keyring that its possessors may only search (its user, its
    owner included, and anyone else: no right at all). The sandbox keeps nothing of the session
    it was started in (a login session's keyring may hold its user's credentials); its batches,
    which share it through the fork, can neither add nor link a key to it, nor read it, nor
    change its rights (that needs a right it does not give), so it carries nothing from one
    batch to the next. Its serial, 0 where the kernel has no keys, None where this failed."""
    serial = _keyctl(libc, _KEYCTL_JOIN_SESSION_KEYRING, None)
    if serial == -errno.ENOSYS:
        return 0
    if serial <= 0 or _keyctl(libc, _KEYCTL_SETPERM, serial, _KEY_POS_SEARCH) < 0:
        return None
    return serial


def isolate_batch() -> None:
    """In a process forked by the zygote where no seccomp filter binds it (seal()), before any
    candidate code: kernel state of its own, which dies with it, instead of the sandbox's,
    which the next batch would find. A new user namespace, whose user, user-session and
    persistent keyrings are its own (keyrings are per user namespace: the one of the user the
    sandbox runs as outlives every sandbox, the host's nobody's included); an IPC namespace it
    owns (System V shared memory, semaphores and message queues, POSIX message queues: it
    cannot enter the sandbox's again, which needs a capability there), and a network namespace
    it owns (abstract UNIX socket names, ports). Its capabilities in the
    new namespace are dropped at once. (The session keyring it shares with the zygote takes no
    key: _own_session_keyring; one it joins is its own, and one it gives the zygote ends the
    run: session_keyring_moved.) An ordinary user needs no privilege for this; inside a chroot
    the kernel refuses it (lockdown() tries it first: batchns). Raises OSError where a step
    fails."""
    libc = _LIBC if _LIBC is not None else _Libc()
    # Its own network namespace too: abstract UNIX socket names (and ports) are per network
    # namespace, and a socket sent in a message that it holds itself (an SCM_RIGHTS cycle)
    # outlives the batch's exit until the kernel's collector of in-flight sockets runs, which
    # only a later release of a socket somewhere starts: in the sandbox's namespace, the next
    # batch found the name still bound (tests/test_redteam_session11b.py).
    err = libc.call("unshare", CLONE_NEWUSER | CLONE_NEWIPC | CLONE_NEWNET)
    if err:
        raise OSError(err, f"a batch's own user, IPC and network namespaces: "
                      f"{os.strerror(err)}")
    if not _drop_capabilities(libc):
        raise OSError(errno.EPERM, "a batch's capabilities in its user namespace stay")


def _try_batch(libc: _Libc, end_others: bool) -> bool:
    """Whether a batch forked now gets kernel state of its own (isolate_batch) and leaves no
    process behind: it cannot fork once sealed, or (`end_others`) the zygote, its PID
    namespace's init, ends every other process of the namespace after each batch. Tried in a
    child, as a batch would be (root may still fork: RLIMIT_NPROC does not bind the host's
    uid 0, even in a user namespace of its own)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            isolate_batch()
            _cap(resource.RLIMIT_NPROC, 0)
            try:
                child = os.fork()
            except OSError:
                child = -1
            if child == 0:
                os._exit(0)
            if child > 0:
                os.waitpid(child, 0)
            code = 0 if child < 0 or end_others else 2
        finally:
            os._exit(code)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def session_keyring_moved() -> bool:
    """In the zygote after a batch: whether its session keyring is no longer the one lockdown()
    joined. A batch of the same user may give its parent its own (KEYCTL_SESSION_TO_PARENT),
    and every later batch would start with it."""
    if not _SESSION_KEYRING or _LIBC is None:
        return False
    return _keyctl(_LIBC, _KEYCTL_GET_KEYRING_ID, _KEY_SPEC_SESSION_KEYRING, 0) \
        != _SESSION_KEYRING


def end_leftovers() -> None:
    """In the zygote after a batch, where no seccomp filter keeps batches from forking and the
    zygote is its PID namespace's init: end every other process of the namespace (a batch's
    orphans, wherever they moved: no process leaves a PID namespace, and kill(-1) reaches
    each of them, those of namespaces nested in it included, atomically with respect to
    fork), and wait until every one is gone: each is the zygote's child by then (an orphan
    moves to its namespace's init), and one still running could yet act on the zygote (give it
    a session keyring: session_keyring_moved, which is checked after this). Nothing else lives
    there: the batch is reaped, and the zygote's own parent is outside."""
    if not _END_OTHERS:
        return
    with contextlib.suppress(OSError):  # ESRCH: there was none
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:  # none left
            return


# ---- the PID namespace: the first child is its init; this process waits for it ----------------


def _fork_and_wait(libc: _Libc, cpu_seconds: int, root: bool, ppid: int) -> int:
    """Fork: the child returns (the parent process id it should see from now on) and goes on;
    this process waits for it and exits with its status, so that the sandbox's parent sees what
    it would have seen (one process, its exit status, its process group, which its kill
    reaches). In a new PID namespace the child is its PID 1, which the hard CPU limit ends with
    SIGKILL (a PID 1 ignores SIGXCPU): a SIGKILL after the soft limit is passed on as SIGXCPU."""
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        return 0 if os.getppid() == 0 else me  # 0: the parent is outside the new PID namespace
    code = 1
    try:  # this process holds nothing and runs no candidate code: it only waits
        os.closerange(0, 1 << 20)
        if root:
            with contextlib.suppress(OSError):
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
        _drop_capabilities(libc)
        libc.lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change
        if os.getppid() != ppid:
            os._exit(1)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        while True:
            try:
                _, status, ru = os.wait4(pid, 0)
                break
            except InterruptedError:
                continue
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
        else:
            sig = os.WTERMSIG(status)
            if sig == signal.SIGKILL and ru.ru_utime + ru.ru_stime >= cpu_seconds - 0.5:
                sig = signal.SIGXCPU
            code = 128 + sig
            if sig != signal.SIGKILL:
                signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
    finally:
        os._exit(code)


# ---- Landlock ----------------------------------------------------------------------------------


def _landlock_ruleset(libc: _Libc) -> int:
    """A Landlock ruleset that handles every access right this kernel knows and grants none:
    no file opened, listed, created, removed or executed by path; no TCP bind or connect (ABI
    4); no signal or abstract UNIX socket beyond the sandbox (ABI 6). -1 where unsupported."""
    abi = libc.syscall(_LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return -1
    fs = (1 << 13) - 1  # EXECUTE ... MAKE_SYM
    if abi >= 2:
        fs |= 1 << 13  # REFER
    if abi >= 3:
        fs |= 1 << 14  # TRUNCATE
    if abi >= 5:
        fs |= 1 << 15  # IOCTL_DEV
    attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = libc.syscall(_LANDLOCK_CREATE_RULESET, attr, size, 0)
    return int(fd) if fd >= 0 else -1


# ---- seccomp -----------------------------------------------------------------------------------

# Allowed after lock-down: what a Python process computing with numpy, and talking over the
# descriptors it already holds, needs. Everything else fails with EPERM (allow-list: a syscall
# added to a later kernel, or one forgotten here, is refused rather than allowed).
SECCOMP_ALLOW = (
    # I/O on descriptors already open, and closing or duplicating them
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev",
    "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "poll", "ppoll", "select",
    "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "pipe",
    "pipe2", "eventfd2", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown",
    # fstat(2) (glibc's is newfstatat on the descriptor); it also stats a path, which shows
    # nothing where the root is empty (elsewhere: metadata, never contents or listings)
    "fstat", "newfstatat", "statx",
    # memory
    "mmap", "munmap", "mremap", "mprotect", "brk", "madvise", "msync", "mincore",
    # threads of its own, time, randomness, its own ids and usage
    "futex", "futex_waitv", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
    "getresgid", "getgroups", "getpgrp", "getsid", "getrusage", "times", "clock_gettime",
    "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "getrandom", "getcwd",
    # its own signal handling, and the end
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "sigaltstack", "restart_syscall", "exit", "exit_group",
)
_FCNTL_OK = (0, 1, 2, 3, 4, 1030)  # F_DUPFD F_GETFD F_SETFD F_GETFL F_SETFL F_DUPFD_CLOEXEC
_ACT_ALLOW, _ACT_KILL_PROCESS = 0x7FFF0000, 0x80000000
_CMP_EQ, _FLTATR_ACT_BADARCH, _FLTATR_CTL_NNP, _FLTATR_CTL_TSYNC = 4, 2, 3, 4
# clone() as glibc's fork() calls it on Linux: CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD.
_FORK_FLAGS = 0x01000000 | 0x00200000 | signal.SIGCHLD
_SECCOMP_SET_MODE_FILTER = 1


def _act_errno(e: int) -> int:
    return 0x00050000 | e


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _Seccomp:
    """The allow-list, built with libseccomp (the library systemd, Docker and Chromium's
    sandboxes use: it handles each architecture's syscall numbers and ABI checks) before the
    root is emptied, loaded last.

    The sandbox process is a zygote that never runs candidate code: it may fork (a plain fork,
    nothing else clone can do), wait for its children and add filters, so that each forked batch
    can `seal()` itself before candidate code runs."""

    def __init__(self, default: int | None = None) -> None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            from ctypes.util import find_library

            name = find_library("seccomp")
            if name is None:
                raise OSError("libseccomp is not installed") from None
            lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.c_void_p]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.ctx = lib.seccomp_init(_act_errno(errno.EPERM) if default is None else default)
        if not self.ctx:
            raise OSError("seccomp_init failed")
        try:
            if default is None:
                self._build()
        except BaseException:
            lib.seccomp_release(self.ctx)
            raise

    def _rule(self, action: int, name: str, *cmps: tuple[int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:  # not a syscall of this architecture
            return
        arr = (_ArgCmp * len(cmps))(*[_ArgCmp(a, _CMP_EQ, v, 0) for a, v in cmps])
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps),
                                             arr if cmps else None)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

    def _build(self) -> None:
        self.lib.seccomp_attr_set(self.ctx, _FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS)
        self.lib.seccomp_attr_set(self.ctx, _FLTATR_CTL_TSYNC, 1)
        for name in SECCOMP_ALLOW:
            self._rule(_ACT_ALLOW, name)
        for cmd in _FCNTL_OK:  # no F_SETOWN / F_SETSIG: signals to another process
            self._rule(_ACT_ALLOW, "fcntl", (1, cmd))
        # rlimits may be read, never set; only this process's.
        self._rule(_ACT_ALLOW, "prlimit64", (0, 0), (2, 0))
        self._rule(_ACT_ALLOW, "getrlimit")
        # ioctl: "not a terminal" (isatty() and friends then behave as on a pipe).
        self._rule(_act_errno(errno.ENOTTY), "ioctl")
        # The zygote's forks (glibc's fork(): these flags exactly), waits, and the filters its
        # children add (a filter can only take permissions away).
        self._rule(_ACT_ALLOW, "clone", (0, _FORK_FLAGS))
        self._rule(_ACT_ALLOW, "wait4")
        self._rule(_ACT_ALLOW, "seccomp", (0, _SECCOMP_SET_MODE_FILTER))

    def load(self) -> bool:
        try:
            return self.lib.seccomp_load(self.ctx) == 0
        finally:
            self.lib.seccomp_release(self.ctx)


# ---- lock-down ---------------------------------------------------------------------------------


def _cap(which: int, soft: int, hard: int | None = None) -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(which, (soft, soft if hard is None else hard))


def _fill_fds(fds: list[int]) -> int:
    """Fill every gap below the highest open descriptor, so that RLIMIT_NOFILE = highest + 1
    leaves no number free for a new one; that limit."""
    if not fds:
        fds = [os.pipe()[0]]
    top, filler = max(fds), fds[0]
    for fd in range(top + 1):
        if fd not in fds:
            os.dup2(filler, fd)
    return top + 1


def _rlimits(limits: dict[str, Any], base_vm: int, nofile: int, pid1: bool) -> None:
    cpu = max(1, int(limits.get("cpu_seconds", 600)))
    _cap(resource.RLIMIT_CORE, 0)
    _cap(resource.RLIMIT_FSIZE, 0)
    # RLIMIT_NPROC goes to 0 in seal(), in each forked batch: this process forks them.
    _cap(resource.RLIMIT_NOFILE, nofile)
    # SIGXCPU (a 'timeout') two seconds before the kill. Candidate code never runs in the
    # namespace's PID 1 (which would ignore it): the zygote forks every batch.
    _cap(resource.RLIMIT_CPU, cpu, cpu + 2)
    if base_vm:
        _cap(resource.RLIMIT_AS, base_vm + int(limits.get("memory_mb", 1024)) * 1024 * 1024)


def _namespaces(libc: _Libc, root: bool, workdir: str, cpu: int, applied: dict[str, Any],
                notes: list[str]) -> int:
    """Namespaces and the empty root; the parent process id to expect afterwards."""
    ppid = os.getppid()
    if _threads() > 1:
        # A user or mount namespace wants a single thread (a library may have started one):
        # the forked child has only this one.
        ppid = _fork_and_wait(libc, cpu, root, ppid)
        notes.append("forked to leave other threads behind")
    _unshare(libc, root, applied, notes)
    _empty_root(libc, workdir, applied, notes)
    if applied["pidns"]:
        ppid = _fork_and_wait(libc, cpu, root, ppid)
    return ppid


def lockdown(limits: dict[str, Any], workdir: str) -> dict[str, bool | str]:
    """Confine this process before candidate code runs (module docstring). `workdir`: an empty
    directory the process can reach; it becomes its root. Each mechanism falls back where the
    platform refuses it; the returned dict says which applied ('notes': why others did not,
    'lockdown_ms': how long this took). With a PID namespace (or other threads) the process
    forks: the caller continues in the child, the original process only waits for it and exits
    with its status."""
    t0 = time.perf_counter()
    disable = _disabled(limits)
    applied: dict[str, Any] = dict.fromkeys(KEYS, False)
    notes: list[str] = []
    libc = _Libc()
    root = os.geteuid() == 0
    cpu = max(1, int(limits.get("cpu_seconds", 600)))
    # Everything that reads files happens first.
    base_vm = _vm_size_bytes()
    fds = _open_fds()
    filt: _Seccomp | None = None
    if "seccomp" not in disable:
        try:
            filt = _Seccomp()
        except OSError as e:
            notes.append(f"seccomp: {e}")
    if "namespaces" in disable:
        ppid = os.getppid()
    else:
        ppid = _namespaces(libc, root, os.path.abspath(workdir), cpu, applied, notes)
    global _LIBC, _SESSION_KEYRING, _BATCH_NS, _END_OTHERS
    _LIBC = libc
    # before the drop of privileges: as root, a keyring that nobody's batches cannot replace
    _SESSION_KEYRING = _own_session_keyring(libc)
    if _SESSION_KEYRING is None:
        notes.append("session keyring: not joined")
    replaced = _sanitize_fds(fds)
    if replaced:
        notes.append(f"{replaced} descriptor(s) replaced")
    _drop_privileges(libc, root, applied, "nobody" in disable)
    libc.lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change
    if os.getppid() != ppid:
        os._exit(1)
    applied["no_new_privs"] = libc.lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    libc.lib.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if "landlock" not in disable:
        ruleset = _landlock_ruleset(libc)
        if ruleset >= 0:
            applied["landlock"] = libc.syscall(_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0
            os.close(ruleset)
    _rlimits(limits, base_vm, _fill_fds(fds), applied["pidns"])
    if filt is not None:
        applied["seccomp"] = filt.load()
        global _ZYGOTE_FILTERED
        _ZYGOTE_FILTERED = applied["seccomp"]
    if not applied["seccomp"] and _SESSION_KEYRING is not None and "namespaces" not in disable:
        # No seccomp filter (none built, or the kernel refused it) will refuse a batch the
        # system calls that make kernel objects (keys, System V IPC, sockets) or processes:
        # each batch gets state of its own, and where a batch can still fork, the zygote must
        # be able to end what it leaves. (Not with namespaces turned off: that stands for a
        # platform that refuses them, a batch's own included.)
        _END_OTHERS = applied["pidns"] and os.getpid() == 1
        _BATCH_NS = applied["batchns"] = _try_batch(libc, _END_OTHERS)
        if not _BATCH_NS:
            notes.append("batches: no user, IPC and network namespaces of their own, or a "
                         "fork left")
    if notes:
        applied["notes"] = "; ".join(notes)[:1000]
    applied["lockdown_ms"] = f"{(time.perf_counter() - t0) * 1e3:.2f}"
    return applied


# ---- what the platform allows ------------------------------------------------------------------


def is_strong(applied: dict[str, Any]) -> bool:
    """Whether candidate code is kept from the host file system and the network, by the kernel:
    the file system by an empty root, Landlock or the seccomp allow-list (each refuses every
    open, listing, creation and removal of a host path); the network, the host's UNIX sockets
    included (a D-Bus or Docker socket is a way out), by the seccomp allow-list (no socket), or
    by a network namespace (no interface, its own abstract sockets) with an empty root (no
    socket file in reach). And one batch is kept from leaving kernel state for the next (a
    key, a System V object, an abstract socket, a process): by the seccomp allow-list, or by a
    user, an IPC and a network namespace of each batch's own, a shared session keyring that
    takes no key, and no process left behind (batchns). Where the dict carries a probe's
    measurements, they must agree."""
    fs = bool(applied.get("empty_root") or applied.get("landlock") or applied.get("seccomp"))
    net = bool(applied.get("seccomp") or (applied.get("netns") and applied.get("empty_root")))
    # One batch must not leave the next kernel state to find (keys, System V IPC, a process):
    # the seccomp filter refuses the calls that make it, or each batch has its own (batchns).
    batches = bool(applied.get("seccomp") or applied.get("batchns"))
    for key in ("fs_blocked", "net_blocked"):
        if key in applied and applied[key] is not True:
            return False
    return fs and net and batches and not applied.get("probe_error")


def describe(applied: dict[str, Any]) -> str:
    """One line: the mechanisms that applied, or 'none'."""
    on = [k for k in KEYS if applied.get(k) is True]
    return ", ".join(on) if on else "none"


# The probe child: lock down, then try what a candidate with code execution would.
_PROBE = r"""
import json, os, socket, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
from autotts.sandbox.lockdown import lockdown, seal
canary = args["canary"]
t0 = time.perf_counter()
applied = lockdown(args["limits"], args["workdir"])
seal()  # as each forked batch does before candidate code
ms = (time.perf_counter() - t0) * 1e3
os.close(0)  # a free descriptor, as a candidate with code execution would make one
def fails(f):
    try:
        f()
    except OSError:
        return True
    return False
def read():
    with open(canary, "rb") as f:
        f.read()
def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(address)
def fork():
    if os.fork() == 0:
        os._exit(0)
res = {"fs_blocked": fails(read) and fails(lambda: os.listdir(os.path.dirname(canary)))
       and fails(lambda: os.mkdir(canary + ".d")),
       "net_blocked": fails(lambda: connect(socket.AF_INET, ("127.0.0.1", args["port"])))
       and fails(lambda: connect(socket.AF_UNIX, args["unix"])),
       "fork_blocked": fails(fork)}
out = dict(applied)
out.update(res, lockdown_ms=round(ms, 3))
os.write(1, json.dumps(out).encode())
"""

_PROBES: dict[frozenset[str], dict[str, Any]] = {}


# Variables that keep libraries from starting threads at import: lock-down prefers a single
# thread (else it forks once more to leave the others behind).
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMEXPR_NUM_THREADS": "1",
                     # pyarrow's jemalloc starts a background thread otherwise
                     "JE_ARROW_MALLOC_CONF": "background_thread:false"}


def child_env(home: str) -> dict[str, str]:
    """A minimal environment for a confined child."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
           "TMPDIR": home, **SINGLE_THREAD_ENV}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def probe(disable: list[str] | None = None) -> dict[str, Any]:
    """What isolation this platform gives a sandbox process, measured: a small child locks
    itself down (as the sandbox does) and tries to read a file, list and create in a directory,
    connect to a TCP port on 127.0.0.1 that accepts, and fork. Returns lockdown()'s dict plus
    fs_blocked, net_blocked, fork_blocked, lockdown_ms and start_ms (the child's whole start,
    lock-down included), or probe_error. Cached per process and set of disabled mechanisms
    (default: AUTOTTS_SANDBOX_DISABLE)."""
    names = frozenset(disabled_from_env() if disable is None else disable)
    if names not in _PROBES:
        _PROBES[names] = _run_probe(sorted(names))
    return dict(_PROBES[names])


def _run_probe(disable: list[str]) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="autotts-probe-")
    work = tempfile.mkdtemp(prefix="autotts-sandbox-")
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chmod(base, 0o755)
        canary = os.path.join(base, "canary")
        with open(canary, "w") as f:
            f.write("probe")
        os.chmod(canary, 0o644)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(4)
        unix.bind(os.path.join(base, "sock"))
        unix.listen(4)
        # the directory that holds this package (this file is autotts/sandbox/lockdown.py)
        args = {"root": str(Path(__file__).resolve().parents[2]), "canary": canary,
                "port": tcp.getsockname()[1], "unix": os.path.join(base, "sock"),
                "workdir": work,
                "limits": {"cpu_seconds": 30, "memory_mb": 512, "isolation_disable": disable}}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-I", "-c", _PROBE, json.dumps(args)], cwd=work,
                           env=child_env(work), capture_output=True, timeout=60,
                           start_new_session=True, check=False)
        start_ms = (time.perf_counter() - t0) * 1e3
        try:
            out = json.loads(p.stdout)
        except ValueError:
            tail = p.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            return {"probe_error": f"the probe exited with {p.returncode}: {tail[0][:300]}"}
        out["start_ms"] = round(start_ms, 3)
        return out
    except (OSError, subprocess.SubprocessError) as e:
        return {"probe_error": f"the probe could not run: {e}"[:300]}
    finally:
        tcp.close()
        unix.close()
        for d in (base, work):
            shutil.rmtree(d, ignore_errors=True)


class ForeignProcesses:
    """Processes that a sandbox's first scan of /proc found to be no part of it (neither in its
    process group nor descendants of its first process), held by pidfd so that later scans can
    skip reading their `stat` while they live.

    Only that first scan learns them (`live_sandbox_processes(..., learn=True)`): it runs when
    the sandbox reports ready, before any candidate code and before the sandbox may fork
    anything, so every process it does not count is truly foreign. Such a process stays
    foreign for life: it is in another session (and a process group never spans sessions, nor
    can a process join an existing session), and it is no descendant of the sandbox's first
    process (a process only ever moves to a subreaper among its own ancestors, or to its PID
    namespace's init; processes it starts later are new ones, read by every scan).
    A pidfd names that process, not its number: once the process has exited, its pidfd is
    readable, and the next scan forgets it before it looks (the number may be another
    process's by then, which is read as any new one). A scan skips only processes that are
    foreign and alive after it listed /proc, whose numbers are theirs. Where pidfds do not exist
    (Linux before 5.3), or past `limit` of them (or a quarter of this process's descriptor
    limit), processes are read as before."""

    def __init__(self, limit: int = 256) -> None:
        import select

        # never more than a quarter of this process's descriptors: the judge needs its own
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.limit = limit if soft == resource.RLIM_INFINITY else min(limit, soft // 4)
        self.fd: dict[int, int] = {}  # pid -> pidfd
        self.pid: dict[int, int] = {}  # pidfd -> pid
        self.poll = select.poll()
        self.ok = hasattr(os, "pidfd_open")

    def add(self, pid: int) -> None:
        if not self.ok or len(self.fd) >= self.limit or pid in self.fd:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already (ESRCH), or no pidfds here, or out of descriptors
            return
        import select

        self.fd[pid], self.pid[fd] = fd, pid
        self.poll.register(fd, select.POLLIN)

    def forget_gone(self) -> None:
        """Forget every process that has exited (its pidfd is readable)."""
        if not self.fd:
            return
        for fd, _ in self.poll.poll(0):
            pid = self.pid.pop(fd, None)
            if pid is not None:
                del self.fd[pid]
            with contextlib.suppress(KeyError, ValueError):
                self.poll.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for fd in self.pid:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd.clear()
        self.pid.clear()


def live_sandbox_processes(leader: int, foreign: ForeignProcesses | None = None,
                           learn: bool = False) -> list[int]:
    """Live processes (zombies excluded) of a sandbox whose first process is `leader`: its
    process group, and every descendant of `leader` wherever it moved (a process that left the
    group with setsid or setpgid, where no seccomp filter refuses them, is still its parent's
    child). With a PID namespace a sandbox is two processes; after a kill of the group, the one
    inside may wait a moment as a zombie for the system's init to reap it (the killed parent
    cannot): gone for every purpose, but `killpg(pgid, 0)` still finds it.

    `foreign`: processes known to be no part of the sandbox, whose `stat` is not read while they
    live (ForeignProcesses); with `learn` (the sandbox's first scan only, before any candidate
    code), every live process this scan does not count is added to them."""
    parent: dict[int, int] = {}
    session: dict[int, bytes] = {}
    members = set()
    names = os.listdir("/proc")
    skip: dict[int, int] = {}
    if foreign is not None:
        foreign.forget_gone()  # after the listing: the numbers it skips are still theirs
        skip = foreign.fd
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in skip:
            continue
        try:  # raw descriptors: a file object per process would triple the cost of a scan
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
            # after the command name (which may hold ")" and spaces): state, ppid, pgrp, session
            fields = raw.rsplit(b")", 1)[1].split(None, 5)
            # A zombie is gone, unless it is a thread group leader that ended alone while its
            # other threads run on (num_threads counts them with it): that process lives.
            if fields[0] in (b"Z", b"X") and int(fields[5].split(None, 13)[12]) <= 1:
                continue
            parent[pid] = int(fields[1])
            session[pid] = fields[3]
            if int(fields[2]) == leader:
                members.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    for pid in parent:
        p, hops = parent[pid], 0
        while p > 1 and p != leader and hops < 64:
            p, hops = parent.get(p, 0), hops + 1
        if p == leader and pid != leader:
            members.add(pid)
    if learn and foreign is not None and leader in session:
        own = session[leader]
        for pid in parent:
            if pid not in members and pid != leader and session[pid] != own:
                foreign.add(pid)
    return sorted(members)


def require_strong(allow_weak: bool) -> dict[str, Any]:
    """probe(), and refuse (WeakSandboxError, one line) when it is not strong and the user has
    not accepted a weak sandbox. Returns the probe's dict either way."""
    found = probe()
    if is_strong(found) or allow_weak:
        return found
    why = found.get("probe_error") or found.get("notes") or "no kernel mechanism applied"
    raise WeakSandboxError(
        f"this platform cannot keep candidate code away from your files and network (isolation "
        f"that applied: {describe(found)}; {str(why)[:200]}); rerun with --allow-weak-sandbox to "
        f"run it anyway, with only the Python-level guards and rlimits")


def _seal_filter() -> _Seccomp | None:
    """seal()'s filter, built (not loaded): allow everything but making a process or a filter."""
    try:
        filt = _Seccomp(default=_ACT_ALLOW)
    except (OSError, ImportError):  # no libseccomp here (and nothing can be imported now)
        return None
    try:
        filt.lib.seccomp_attr_set(filt.ctx, _FLTATR_CTL_NNP, 0)  # already set by lockdown()
        for name in ("clone", "clone3", "fork", "vfork", "seccomp"):
            filt._rule(_act_errno(errno.EPERM), name)
    except BaseException:
        filt.lib.seccomp_release(filt.ctx)
        raise
    return filt


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# seal()'s filter as a BPF program, compiled once by the zygote (prepare_seal): (libc's syscall,
# the seccomp syscall's number, the program, the buffer that holds it).
_SEALED: tuple[Any, int, _SockFprog, Any] | None = None
# Whether lockdown() loaded the zygote's own filter: then a batch whose seal fails must not run
# (the zygote's filter lets it fork).
_ZYGOTE_FILTERED = False


def prepare_seal(limits: dict[str, Any]) -> None:
    """In the zygote, before lock-down: compile seal()'s filter to BPF once, so that each
    batch only loads it with one seccomp() call, as libseccomp's seccomp_load would (flags 0:
    no attribute of this filter asks for any). Building and compiling it in every batch cost
    about a millisecond there, most of it copy-on-write faults. Where this fails, seal() builds
    the filter itself, as before; so it does where seccomp is turned off (`limits`'
    isolation_disable), which stands for a platform without libseccomp: there a batch cannot
    load the library once the file system is gone, and the tests of that platform must see
    what it gets."""
    global _SEALED
    if "seccomp" in _disabled(limits):
        return
    filt = _seal_filter()
    if filt is None:
        return
    lib = filt.lib
    try:
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        nr = int(lib.seccomp_syscall_resolve_name(b"seccomp"))
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(filt.ctx, w)
            os.close(w)
            w = -1
            chunks = []
            while chunk := os.read(r, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    except (OSError, AttributeError):  # a libseccomp without seccomp_export_bpf
        return
    finally:
        lib.seccomp_release(filt.ctx)
    prog = b"".join(chunks)
    if rc != 0 or nr < 0 or not prog or len(prog) % 8 or len(prog) // 8 > 0xFFFF:
        return
    buf = ctypes.create_string_buffer(prog, len(prog))
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    _SEALED = (syscall, nr, _SockFprog(len(prog) // 8, ctypes.addressof(buf)), buf)


def seal() -> None:
    """In a child forked by the zygote, before candidate code: no new processes (RLIMIT_NPROC
    where rlimits can still be set, that is without seccomp; with seccomp, a second filter that
    refuses every way of making one); without seccomp, kernel state of its own
    (isolate_batch)."""
    if _BATCH_NS:
        isolate_batch()
    _cap(resource.RLIMIT_NPROC, 0)
    if _SEALED is not None:
        syscall, nr, fprog, _ = _SEALED
        rc = syscall(ctypes.c_long(nr), ctypes.c_long(_SECCOMP_SET_MODE_FILTER), ctypes.c_long(0),
                     ctypes.byref(fprog))
        if rc != 0 and _ZYGOTE_FILTERED:  # fail closed: the batch ends with a crash verdict
            raise OSError(ctypes.get_errno(), "seal: the seccomp filter could not be loaded")
        return
    filt = _seal_filter()
    if filt is not None:
        filt.load()
