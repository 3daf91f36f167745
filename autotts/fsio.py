"""Crash-safe file primitives and the one JSON encoding of autotts's files: atomic whole-file writes,
fsync'd appends to JSON-lines logs (and reading such a log back when its last line was torn by a
crash), and the `json.dumps` default for numpy values.

This module sits below every layer (it imports nothing from autotts), so the store, the
evaluation, the collector, discovery and the CLI all write files the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def current_umask() -> int:
    """The process umask, read without setting it where /proc says it (os.umask would change it
    for every thread for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = current_umask()  # read once, at import: the mode of a new file written atomically


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new, never a torn file.
    The file gets the permissions of an ordinary new file (mkstemp would make it owner-only),
    or keeps those of the file it replaces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # here: a process that writes nothing never loads it

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o666 & ~UMASK
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_default(o: Any) -> Any:
    """The `json.dumps` default of autotts's files: numpy scalars and arrays as their Python
    values, paths as strings; anything else is refused (TypeError), so a file never holds a value
    that would not read back as what was written."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def json_default_or_str(o: Any) -> Any:
    """`json_default`, but any other value is written as its str() instead of refused: for files
    that carry what a user's controller chose to record (trace fields, result rows, reports),
    which are shown to people and must not fail the run that produced them."""
    try:
        return json_default(o)
    except TypeError:
        return str(o)


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Deterministic JSON (sorted keys): equal content gives equal bytes, so files of a resumed
    run compare equal to those of an uninterrupted one."""
    return json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, default=json_default)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps(obj) + "\n").encode("utf-8"))


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line and fsync it. A crash can at worst leave a torn last line, which
    `read_jsonl` ignores and `repair_jsonl` cuts off."""
    line = (dumps(obj, indent=None) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a line torn by a crash (only ever the last one)
    return out


def repair_jsonl(path: Path) -> None:
    """Cut a torn (unterminated) last line, so the next append starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
