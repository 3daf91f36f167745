"""Checks of the guards' value-check fast path, run in a fresh interpreter that loads what the
sandbox child loads (tests/test_redteam_session13.py): the fast path depends on every metaclass
in existence, and a test process holds more of them than the child (pytest's plugins load
typing_extensions, whose _ProtocolMeta defines __eq__ / __hash__: the fast path is then off)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np

import autotts.sandbox.child  # what the sandbox child imports
from autotts.sandbox import guards


def _setup() -> list[object]:
    for m in (*autotts.sandbox.child.PRELOAD, "scipy.stats", "scipy.special"):
        __import__(m)
    guards.deny_objects()
    return list(guards._DENIED_KEEP)


def _through_each_guard(o: object) -> list[tuple[str, object]]:
    """What each guard makes of `o` where candidate code meets it: 'denied', or the value it
    handed back."""
    holder = types.SimpleNamespace(x=o)
    ways = {
        "getattr": lambda: guards._guarded_getattr(holder, "x"),
        "getattr-default": lambda: guards._guarded_getattr(holder, "x", None),
        "getitem": lambda: guards._guarded_getitem([o], 0),
        "checked": lambda: guards.checked(o),
        "iter": lambda: next(guards._getiter([o])),
        "unpack": lambda: next(guards._unpack([o], None, None)),
    }
    out = []
    for name, way in ways.items():
        try:
            out.append((name, way()))
        except guards.SandboxViolation:
            out.append((name, "denied"))
        finally:
            guards.STATE.violation = None
    return out


def no_denied_object_and_no_module_has_a_plain_type() -> None:
    denied = _setup()
    assert guards._PLAIN_TYPES, "the fast path is off in the child's set of modules"
    assert {int, float, str, np.ndarray, types.MethodType} <= guards._PLAIN_TYPES
    for o in denied:
        assert type(o) not in guards._PLAIN_TYPES, o
    for m in list(sys.modules.values()):
        assert type(m) not in guards._PLAIN_TYPES, m
    assert types.ModuleType not in guards._PLAIN_TYPES
    # a set lookup of a type is by identity: no metaclass defines its own __eq__ / __hash__
    for t in guards._PLAIN_TYPES:
        assert type(t) is type, t


def every_denied_object_is_denied_by_every_guard() -> None:
    denied = _setup()
    assert len(denied) > 500
    for o in [*denied, os, subprocess]:
        for _ in range(2):  # the second read of the name takes getattr's fast path
            for name, got in _through_each_guard(o):
                if o is np.ndarray:
                    assert got is guards._SafeNdarray, name
                else:
                    assert got == "denied", (name, o)


def plain_values_pass_every_guard_unchanged() -> None:
    _setup()
    arr = np.arange(3)
    for o in [1, 2.5, True, "s", None, (1,), [1], arr, arr.sum(), np.float64(1.0),
              np.bool_(True), guards.STATE.sink.write]:
        for name, got in _through_each_guard(o):
            assert got is o, (name, o)


def the_types_of_denied_objects_and_modules_are_never_plain() -> None:
    """Even were they candidates: _plain_types() takes out the type of every denied object and
    every module type (today no candidate is one; a later candidate list might hold one)."""
    _setup()
    real = guards._plain_candidates
    unsafe = {dict, type, type(len), types.FunctionType, types.ModuleType,
              type("SubModule", (types.ModuleType,), {})}
    guards._plain_candidates = lambda: real() | unsafe
    try:
        guards._plain_types()
        assert guards._PLAIN_TYPES and not (guards._PLAIN_TYPES & unsafe), guards._PLAIN_TYPES
    finally:
        guards._plain_candidates = real
        guards._plain_types()


if __name__ == "__main__":
    globals()[sys.argv[1]]()
    print("ok")
