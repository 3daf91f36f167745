"""The controller contract (docs/design.md §5; the text: autotts/contract.md) and how controllers are found, loaded and configured.

A controller is one Python file with one class:

    class MyController:
        NAME = "my_controller"

        @staticmethod
        def schedule(beta: float) -> dict:      # every knob from β ∈ [0, 1], monotone in budget
            return {"n": 2 + round(62 * beta)}

        def __init__(self, n: int = 64): ...   # knobs are keyword arguments

        def run(self, ep) -> int | None:       # one episode; return an answer class (or None)
            ...

The episode handle `ep` is autotts.engine.Episode. A fresh instance runs each episode, so results
never depend on which episodes a worker happened to run before.
"""

from __future__ import annotations

import inspect
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotts.errors import ConfigError, ControllerError
from autotts.paths import controllers_dir


@dataclass(frozen=True)
class ControllerSpec:
    """A loaded controller: its NAME, the file it came from, its class and source text."""

    name: str
    path: str
    cls: type
    source: str = ""

    @property
    def batched(self) -> bool:
        """Whether the class defines run_batch (docs/batch.md): the in-process evaluator then runs
        whole work units through it; tracing, the sandbox and discovery always use run()."""
        return callable(getattr(self.cls, "run_batch", None))

    def knob_names(self) -> list[str]:
        sig = inspect.signature(self.cls.__init__)
        return [p for p in list(sig.parameters)[1:] if p not in ("args", "kwargs")]

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.cls.__init__)
        out = {}
        for name, p in list(sig.parameters.items())[1:]:
            if p.default is not inspect.Parameter.empty:
                out[name] = p.default
        return out

    def schedule(self, beta: float) -> dict[str, Any]:
        if not (isinstance(beta, int | float) and math.isfinite(beta)):
            raise ConfigError(f"beta must be a finite number, got {beta!r}")
        knobs = self.cls.schedule(float(beta))
        if not isinstance(knobs, dict):
            raise ControllerError(
                f"{self.path}: {self.cls.__name__}.schedule({beta}) returned "
                f"{type(knobs).__name__}, expected a dict of knobs"
            )
        unknown = set(knobs) - set(self.knob_names())
        if unknown:
            raise ControllerError(
                f"{self.path}: schedule returns knob(s) {sorted(unknown)} that "
                f"{self.cls.__name__}.__init__ does not take"
            )
        return knobs

    def config(self, beta: float | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Knobs for one run: schedule(β) (or the constructor defaults when β is None), then the
        user's --set overrides."""
        base = self.schedule(beta) if beta is not None else self.defaults()
        overrides = overrides or {}
        known = set(self.knob_names())
        for k in overrides:
            if k not in known:
                raise ConfigError(
                    f"controller {self.name!r} has no knob {k!r} (knobs: {', '.join(sorted(known))})"
                )
        defaults = self.defaults()
        for k, v in overrides.items():
            want = _kind_of(defaults[k] if k in defaults else base.get(k))
            if want is not None and not _fits(v, want):
                raise ConfigError(
                    f"knob {k!r} of controller {self.name!r} expects {want}, got {v!r} "
                    f"(--set {k}=...)"
                )
        cfg = {**base, **overrides}
        missing = [k for k in self.knob_names() if k not in cfg and k not in defaults]
        if missing:
            raise ConfigError(
                f"controller {self.name!r}: knob(s) {missing} have no default; "
                "give --betas or --set them"
            )
        if overrides:
            # A value the constructor refuses is the user's configuration error, reported once
            # here with the knob's name, not as a controller crash at question 0.
            try:
                self.cls(**cfg)
            except Exception as e:
                given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
                raise ConfigError(
                    f"controller {self.name!r} rejects --set {given}: {type(e).__name__}: {e}"
                ) from None
        return cfg

    def make(self, config: dict[str, Any]) -> Any:
        return self.cls(**config)


def _kind_of(value: Any) -> str | None:
    """The kind of value a knob takes, judged from its default (or scheduled) value. Deliberately
    coarse: an int default may still take 0.5; only a value of another kind is refused here (the
    constructor itself gets the last word)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return None  # strings, None, lists, ...: the constructor decides


def _fits(value: Any, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def builtin_names() -> list[str]:
    d = controllers_dir()
    return sorted(p.stem for p in d.glob("*.py") if not p.name.startswith("_"))


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".py" or "/" in name_or_path or p.exists():
        if not p.is_file():
            raise ControllerError(f"{name_or_path}: no such controller file")
        return p.resolve()
    f = controllers_dir() / f"{name_or_path}.py"
    if not f.is_file():
        raise ControllerError(
            f"unknown controller {name_or_path!r} (built-ins: {', '.join(builtin_names())}; "
            "or give a path to a .py file)"
        )
    return f


BATCH_SECTION = "# ---- run_batch:"
"""Where a controller file's lockstep section begins (docs/batch.md): everything from this line
on is the optional run_batch; the file above it is the per-episode controller."""


def per_episode_source(source: str) -> str:
    """A controller file without its run_batch section: what discovery shows an agent (the
    sandbox runs run() only, so a candidate has no use for the lockstep form)."""
    at = source.find("\n" + BATCH_SECTION)
    return source if at < 0 else source[:at].rstrip("\n") + "\n"


def find_controller_class(module: Any, path: str) -> type:
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and hasattr(obj, "run")
        and hasattr(obj, "schedule")
    ]
    if len(classes) != 1:
        raise ControllerError(
            f"{path}: expected exactly one controller class (with NAME, schedule and run), "
            f"found {len(classes)}"
        )
    cls = classes[0]
    if not isinstance(getattr(cls, "NAME", None), str) or not cls.NAME:
        raise ControllerError(f"{path}: {cls.__name__}.NAME must be a non-empty string")
    if not callable(cls.run):
        raise ControllerError(f"{path}: {cls.__name__}.run must be a method run(self, ep)")
    if not isinstance(inspect.getattr_static(cls, "schedule"), staticmethod | classmethod):
        raise ControllerError(f"{path}: {cls.__name__}.schedule must be a @staticmethod")
    return cls


_CACHE: dict[str, ControllerSpec] = {}


def load(name_or_path: str) -> ControllerSpec:
    """Import a controller in this process. Only for trusted code: agent-written candidates go
    through the sandbox instead."""
    path = resolve(name_or_path)
    return load_source(path.read_text(), str(path))


def load_source(source: str, filename: str) -> ControllerSpec:
    """Import trusted controller source (workers on other hosts get the source, not a path).
    `filename` is where tracebacks point; loads are cached by (filename, source)."""
    key = f"{filename}\0{hash(source)}"
    if key in _CACHE:
        return _CACHE[key]
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise ControllerError(f"{filename}:{e.lineno}: syntax error: {e.msg}") from None
    stem = Path(filename).stem
    mod_name = f"autotts_controller_{stem}_{abs(hash(key)) & 0xFFFFFF:x}"
    module = types.ModuleType(mod_name)
    module.__file__ = filename
    sys.modules[mod_name] = module  # dataclasses and pickling look classes up by module
    try:
        exec(code, module.__dict__)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ControllerError(f"{filename}: import failed: {type(e).__name__}: {e}") from None
    cls = find_controller_class(module, filename)
    result = ControllerSpec(name=cls.NAME, path=filename, cls=cls, source=source)
    _CACHE[key] = result
    return result


def parse_sets(items: list[str]) -> dict[str, Any]:
    """Knob overrides from KEY=VALUE strings (`--set`, the reference table's configs): true/false,
    then int, then float, else the text itself."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        result[key.strip()] = _parse_value(value.strip())
    return result


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text
