"""A content-addressed cache of the built-in baselines' evaluations, shared by all runs.

A trusted controller's sweep is a pure function of its source, the stores' content, the β grid,
the protocol and the evaluation code, so every discovery run on the same environment would
otherwise recompute the same seed curves (on the search split) and baseline curves (on the
held-out split) — most of a short run's non-LLM time. The key hashes all of those; the evaluation
code is hashed by the source of the modules that decide the numbers, so a change to the engine
invalidates the cache by itself. Candidates are never cached here.

Location: $AUTOTTS_CACHE_HOME, else $XDG_CACHE_HOME/autotts, else ~/.cache/autotts;
AUTOTTS_BASELINE_CACHE=0 turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autotts import __version__
from autotts.evaluate import EvalProtocol
from autotts.fsio import dumps, read_json, write_json
from autotts.paths import PACKAGE_DIR

# Every module whose code shapes a cached curve, objective or digest.
_CODE = ("engine.py", "batch.py", "evaluate.py", "units.py", "draws.py", "store.py",
         "controller.py", "answers.py", "metrics.py", "report.py", "summary.py",
         "discover/digest.py", "discover/candidates.py", "discover/significance.py")


def cache_home() -> Path | None:
    if os.environ.get("AUTOTTS_BASELINE_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("AUTOTTS_CACHE_HOME"):
        return Path(os.environ["AUTOTTS_CACHE_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "autotts"


def _code_hash() -> str:
    h = hashlib.sha256(__version__.encode())
    for name in _CODE:
        p = PACKAGE_DIR / name
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def key(kind: str, controller_source: str, stores: Sequence[str], betas: Sequence[float],
        proto: EvalProtocol, **extra: Any) -> str:
    blob = dumps({"kind": kind, "code": _code_hash(),
                  "controller": hashlib.sha256(controller_source.encode()).hexdigest(),
                  "stores": list(stores), "betas": [float(b) for b in betas],
                  "proto": asdict(proto), "extra": extra}, indent=None)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached(k: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    home = cache_home()
    path = None if home is None else home / "baselines" / f"{k}.json"
    if path is not None and path.is_file():
        try:
            return read_json(path)
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: recompute and overwrite
    value = compute()
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only cache is no reason to fail a run
            write_json(path, value)
    return value
