"""OS-level confinement of the sandbox child (issue 21 replaces this with kernel isolation that
holds without root as well)."""

from __future__ import annotations

import contextlib
from typing import Any


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _open_fds() -> list[int]:
    import os

    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return [0, 1, 2]
    fds = []
    for n in names:
        fd = int(n)
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            pass
    return sorted(fds)


def lockdown(limits: dict[str, Any]) -> dict[str, bool]:
    """Take away the network, the file system, new processes and new descriptors; cap CPU and
    memory. Each step falls back silently where the platform does not allow it; the import rules
    and guards hold regardless."""
    import ctypes
    import os
    import resource
    import signal

    applied = {"netns": False, "chroot": False, "nobody": False}
    ppid = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        libc = None
    clone_newnet, clone_newuser = 0x40000000, 0x10000000
    if libc is not None:
        if os.geteuid() == 0:
            applied["netns"] = libc.unshare(clone_newnet) == 0
        else:
            applied["netns"] = libc.unshare(clone_newuser | clone_newnet) == 0
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    base_vm = _vm_size_bytes()
    # Fill every gap below the highest open descriptor, so that RLIMIT_NOFILE = highest + 1
    # leaves no number free for a new one.
    fds = _open_fds()
    top = max(fds) if fds else 2
    for fd in range(top + 1):
        if fd not in fds:
            os.dup2(0, fd)
    if os.geteuid() == 0:
        try:
            os.chroot(".")
            os.chdir("/")
            applied["chroot"] = True
        except OSError:
            pass
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            applied["nobody"] = True
        except OSError:
            pass
    if libc is not None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after the uid change)
    if os.getppid() != ppid:
        os._exit(1)

    def cap(which: int, soft: int, hard: int | None = None) -> None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft, soft if hard is None else hard))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_FSIZE, 0)
    # RLIMIT_NPROC goes to 0 in seal(): this process forks one child per batch of episodes.
    cap(resource.RLIMIT_NOFILE, top + 1)
    cpu = max(1, int(limits.get("cpu_seconds", 600)))
    cap(resource.RLIMIT_CPU, cpu, cpu + 2)
    mem = int(limits.get("memory_mb", 1024)) * 1024 * 1024
    if base_vm:
        cap(resource.RLIMIT_AS, base_vm + mem)
    return applied


def seal() -> None:
    """In a forked child, before candidate code: no new processes."""
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
