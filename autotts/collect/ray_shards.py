"""Run `autotts collect --shard I/N` shards as Ray tasks, one per GPU, then merge them.

    python -m autotts.collect.ray_shards --shards 8 --ray-address auto --out /shared/Qwen3-8B/aime24 \\
        -- --model Qwen/Qwen3-8B --questions aime24 --n 128

Each task asks Ray for `num_gpus` GPUs, so Ray places one shard per GPU and sets the task's
CUDA_VISIBLE_DEVICES; the shard runs the ordinary collect command in a subprocess (vLLM manages
its own processes, and the GPU is released when the subprocess exits). Shard I writes the store
directory OUT.shard-I-of-N, i.e. the work directory OUT.shard-I-of-N.collect, plus a log
OUT.shard-I-of-N.log; once every shard succeeded their work directories are merged into OUT.
OUT must be on a file system that every node and this driver see (the same path everywhere).
Rerunning the same launch resumes: each shard skips the questions its work directory finished.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotts.errors import AutoTTSError, ConfigError, ShardError


def shard_out(out: Path, i: int, n: int) -> Path:
    return out.with_name(f"{out.name}.shard-{i}-of-{n}")


def _run_shard(cmd: list[str], cwd: str, log: str, timeout_s: float | None) -> tuple[int, str]:
    """Runs inside the Ray task: the collect command with this task's GPU(s), output to `log`."""
    with open(log, "ab") as f:
        # A session of its own, so that a timeout stops the command and every process it started.
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -int(signal.SIGKILL)
    with open(log, "rb") as f:
        f.seek(max(0, os.path.getsize(log) - 2000))
        return rc, f.read().decode("utf-8", "replace")


def launch_collect(
    collect_args: Sequence[str],
    out: str | os.PathLike[str],
    shards: int,
    *,
    num_gpus: float = 1,
    address: str | None = None,
    timeout_s: float | None = None,
    command: Sequence[str] | None = None,
) -> Path:
    """Collect into the store OUT with `shards` Ray tasks and merge; returns OUT.

    `collect_args` are `autotts collect` options other than --out and --shard. `address` as for
    `autotts.raysupport.connect_ray` (None: a local runtime on 127.0.0.1). `timeout_s` bounds each
    shard (None: no limit, as a real collection can take hours). `command` replaces
    `python -m autotts collect` (the task's Python, i.e. the cluster's installation)."""
    from autotts.collect.runner import merge
    from autotts.collect.writer import WorkDir
    from autotts.raysupport import connect_ray

    if shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    if any(a == "--out" or a.startswith(("--out=", "--shard")) for a in collect_args):
        raise ConfigError("give --out to the launcher and leave --shard to it")
    out = Path(out).absolute()
    connect_ray(address)
    import ray

    task = ray.remote(num_cpus=0, num_gpus=num_gpus, max_retries=0)(_run_shard)
    cwd = os.getcwd()  # relative paths in collect_args mean the same here and in the shards
    refs = {}
    for i in range(shards):
        cmd = [*(command or _default_command()), *collect_args,
               "--out", str(shard_out(out, i, shards)), "--shard", f"{i}/{shards}"]
        log = str(shard_out(out, i, shards)) + ".log"
        refs[task.remote(cmd, cwd, log, timeout_s)] = i
    # The driver's wait is bounded too: a shard that Ray cannot place (no GPU free) never starts.
    deadline = None if timeout_s is None else timeout_s + 120
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=deadline)
    failures = [f"shard {refs[r]}/{shards} never finished (no free GPU?)" for r in pending]
    for ref in pending:
        ray.cancel(ref, force=True)
    for ref in done:
        try:
            rc, tail = ray.get(ref)
        except ray.exceptions.RayError as e:
            failures.append(f"shard {refs[ref]}/{shards}: {type(e).__name__}: {e}")
            continue
        if rc != 0:
            failures.append(f"shard {refs[ref]}/{shards} exited with {rc}:\n{tail.strip()}")
    if failures:
        raise ShardError("; ".join(sorted(failures)))
    return merge([WorkDir.for_store(shard_out(out, i, shards)).root for i in range(shards)], out)


def _default_command() -> list[str]:
    return [sys.executable, "-m", "autotts", "collect"]


def main(argv: Sequence[str] | None = None) -> Any:
    p = argparse.ArgumentParser(
        prog="python -m autotts.collect.ray_shards",
        description="Run `autotts collect` shards as Ray tasks (one per GPU) and merge them. "
                    "Options after the launcher's own go to `autotts collect`.",
    )
    p.add_argument("--shards", type=int, required=True, help="number of shards (tasks)")
    p.add_argument("--out", type=Path, required=True, help="store directory to write")
    p.add_argument("--num-gpus", type=float, default=1, help="GPUs per shard (default 1)")
    p.add_argument("--ray-address", default=None, help="cluster address (else a local runtime)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per shard (default none)")
    args, rest = p.parse_known_args(argv)
    rest = rest[1:] if rest[:1] == ["--"] else rest
    try:
        path = launch_collect(rest, args.out, args.shards, num_gpus=args.num_gpus,
                              address=args.ray_address, timeout_s=args.timeout)
    except AutoTTSError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
