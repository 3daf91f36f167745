"""Crash-safe file primitives of the run directory: atomic whole-file writes, fsync'd appends to
JSON-lines logs, and reading such a log back when its last line was torn by a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from autotts.store import atomic_write_bytes


def json_default(o: Any) -> Any:
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
