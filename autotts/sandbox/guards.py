"""Defence in depth inside the sandbox child: the guarded builtins candidate code runs with.

RestrictedPython (autotts.sandbox.admission) routes every attribute read, item read, write,
iteration and import of candidate code through the functions here: imports only from the
allow-list, no private names, no module that is not allowed, no file / raw-memory doors of numpy,
no class factories or metaclasses, writes only to objects the candidate owns. An attempt to pass a
guard is recorded before the guard raises, so catching the exception does not help: the run ends
with a `forbidden` verdict.

These guards are not the boundary. The child holds nothing the controller was not shown (the
replay engine runs in the trusted judge) and the OS layer (autotts.sandbox.lockdown) confines the
process; the guards make reaching arbitrary code execution hard in the first place.
"""

from __future__ import annotations

import builtins
import operator
import string
import sys
from collections import Counter, OrderedDict, defaultdict, deque
from types import FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np

from autotts.sandbox.admission import (
    ALLOWED_IMPORTS,
    ALLOWED_MODULE_VALUES,
    DENIED_ATTRS,
    DENIED_MODULE_ATTRS,
    SCIPY_READABLE,
    UNCHECKED_BUILTINS,
)

CANDIDATE_MODULE = "candidate"

class GuardState:
    """What the guards and the child's scheduler share: the candidate's file name and lines, the
    first guard violation (kept even if the candidate catches the exception) and the sink of
    print(). Candidate code cannot reach it (a module attribute of a module it cannot import)."""

    def __init__(self) -> None:
        self.filename = "<candidate>"
        self.source_lines: list[str] = []
        self.violation: tuple[str, int | None] | None = None
        self.sink = PrintSink(64 * 1024)


class PrintSink:
    """Where the candidate's print() goes: kept up to a cap, the rest counted and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def write(self, text: str) -> int:
        n = len(text)
        room = self.cap - self.size
        if room > 0:
            keep = text[:room]
            self.parts.append(keep)
            self.size += len(keep)
            self.dropped += n - len(keep)
        else:
            self.dropped += n
        return n

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(self.parts)


STATE = GuardState()

# ---- guards ----------------------------------------------------------------------------------


class SandboxViolation(Exception):
    """Raised by a guard. Recorded before raising, so catching it does not help the candidate."""


def _candidate_line() -> int | None:
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename == STATE.filename:
            return f.f_lineno
        f = f.f_back
    return None


def _deny(message: str) -> None:
    if STATE.violation is None:
        STATE.violation = (message, _candidate_line())
    raise SandboxViolation(message)


_MISSING = object()
_DENIED_IDS: set[int] = set()
_DENIED_KEEP: list[Any] = []  # keeps denied objects alive, so their ids stay theirs
_FORMAT_NAMES = frozenset({"format", "format_map"})


class _NdarrayMeta(type):
    """`np.ndarray` as the candidate sees it: isinstance / issubclass and attribute reads work,
    calling it does not (its buffer= / strides= arguments reinterpret raw memory)."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def __subclasscheck__(cls, sub: Any) -> bool:
        return isinstance(sub, type) and issubclass(sub, np.ndarray)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        _deny("numpy.ndarray(...) cannot be called in the sandbox; use np.empty, np.zeros or "
              "np.array")

    def __getattr__(cls, name: str) -> Any:
        return _guarded_getattr(np.ndarray, name)

    def __repr__(cls) -> str:
        return "<class 'numpy.ndarray'>"


class _SafeNdarray(metaclass=_NdarrayMeta):
    __slots__ = ()


def _module_attr(mod: ModuleType, name: str, default: Any) -> Any:
    mname = mod.__name__
    if mname not in ALLOWED_MODULE_VALUES:
        _deny(f"module {mname!r} is not available in the sandbox")
    if (name in DENIED_ATTRS or name in DENIED_MODULE_ATTRS.get(mname, ())
            or (mname == "scipy" and name not in SCIPY_READABLE)):
        _deny(f"{mname}.{name} is not available in the sandbox")
    # Straight from the module's namespace: a module-level __getattr__ (numpy's and scipy's lazy
    # loaders) must not import anything on the candidate's behalf.
    try:
        return mod.__dict__[name]
    except KeyError:
        if default is not _MISSING:
            return default
        raise AttributeError(f"module {mname!r} has no attribute {name!r}") from None


# Types none of whose instances is a module or a denied object (deny_objects() builds it: the
# candidates below less every type of a denied object and every module type). A value of one of
# them passes a guard's value check at the cost of one set lookup, with the decision the full
# check would make (docs/sandbox.md, "The value check's fast path"). Empty until then: every
# value takes the full check.
_PLAIN_TYPES: frozenset[type] = frozenset()

_OK_NAMES: set[str] = set()  # attribute names that passed the name checks once
_MODULE_TYPES: set[type] = {ModuleType}
_MODULE_CACHE: dict[tuple[Any, str], Any] = {}


def _slow_getattr(obj: Any, name: Any, default: Any) -> Any:
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name[:1] == "_":
        _deny(f"attribute {name!r} is not accessible (names beginning with '_' are private)")
    if isinstance(obj, ModuleType):
        return _module_attr(obj, name, default)
    if name in _FORMAT_NAMES and (
        isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))
    ):
        return _safe_format(obj, name)
    if name in DENIED_ATTRS:
        if type(obj).__module__ != CANDIDATE_MODULE:
            _deny(f"attribute {name!r} is not accessible in the sandbox")
    elif name not in _FORMAT_NAMES:
        _OK_NAMES.add(name)
    return getattr(obj, name) if default is _MISSING else getattr(obj, name, default)


def _check_value(value: Any, name: str) -> Any:
    if type(value) is ModuleType:
        if value.__name__ not in ALLOWED_MODULE_VALUES:
            _deny(f"module {value.__name__!r} is not available in the sandbox")
    elif id(value) in _DENIED_IDS:
        if value is np.ndarray:
            return _SafeNdarray
        _deny(f"{getattr(value, '__name__', name)} is not available in the sandbox")
    return value


def _guarded_getattr(obj: Any, name: Any, default: Any = _MISSING) -> Any:
    """Every `a.b` of candidate code, and getattr / hasattr. It runs on every attribute read of
    the controller's inner loop, so the common cases are short: a name checked once before, read
    from an object that is not a module, with its value checked; or a module attribute checked
    once before (modules do not change under the candidate: it cannot write to them, and nothing
    is imported once locked down)."""
    if name in _OK_NAMES and type(obj) not in _MODULE_TYPES:
        value = getattr(obj, name) if default is _MISSING else getattr(obj, name, default)
        if type(value) in _PLAIN_TYPES:
            return value
        if type(value) is ModuleType or id(value) in _DENIED_IDS:
            return _check_value(value, name)
        return value
    if type(obj) in _MODULE_TYPES:
        try:
            return _MODULE_CACHE[obj, name]
        except (KeyError, TypeError):
            pass
        value = _check_value(_slow_getattr(obj, name, default), name)
        if value is not default:
            _MODULE_CACHE[obj, name] = value
        return value
    return _check_value(_slow_getattr(obj, name, default), name)


def _guarded_getitem(obj: Any, key: Any) -> Any:
    """Every `a[k]` read: plain indexing, but no module and no denied object (a namespace dict,
    a builtin such as open) comes out of a container."""
    value = obj[key]
    if type(value) in _PLAIN_TYPES:
        return value
    if type(value) is ModuleType or id(value) in _DENIED_IDS:
        return _check_value(value, "this object")
    return value


def _guarded_hasattr(obj: Any, name: Any) -> bool:
    try:
        _guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


_WRITABLE = frozenset({dict, list, set, bytearray, deque, defaultdict, OrderedDict, Counter})
_IMMUTABLE = frozenset({tuple, str, bytes, int, float, complex, bool, frozenset, range,
                        type(None), slice})


class _ItemWriter:
    """What `_write_` hands back for a numpy array: item writes (and the reads of `a[k] += v`),
    nothing else (no flags, dtype, strides or data)."""

    __slots__ = ("a",)

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __getitem__(self, k: Any) -> Any:
        return self.a[k]

    def __setitem__(self, k: Any, v: Any) -> None:
        self.a[k] = v

    def __delitem__(self, k: Any) -> None:
        del self.a[k]


def _guarded_write(obj: Any) -> Any:
    """Target of every `x.a = v`, `x[k] = v`, `del ...` and augmented assignment: the candidate
    may modify its own objects and plain containers, never modules, foreign classes or
    functions (no monkey-patching of numpy, the engine or builtins)."""
    t = type(obj)
    if t in _WRITABLE or t.__module__ == CANDIDATE_MODULE:
        return obj
    if isinstance(obj, np.ndarray):
        return _ItemWriter(obj)
    if t in _IMMUTABLE or isinstance(obj, np.generic):
        return obj  # Python raises its own TypeError
    if isinstance(obj, type | FunctionType) and obj.__module__ == CANDIDATE_MODULE:
        return obj
    _deny(f"cannot modify {t.__name__} objects in the sandbox")


def _guarded_setattr(obj: Any, name: Any, value: Any) -> None:
    if type(name) is not str or name[:1] == "_":
        _deny(f"setattr of {name!r} is not allowed")
    setattr(_guarded_write(obj), name, value)


def _guarded_delattr(obj: Any, name: Any) -> None:
    if type(name) is not str or name[:1] == "_":
        _deny(f"delattr of {name!r} is not allowed")
    delattr(_guarded_write(obj), name)


def _guarded_import(name: str, globals: Any = None, locals: Any = None,
                    fromlist: Any = (), level: int = 0) -> ModuleType:
    if type(fromlist) is list:
        # Not an import statement (those pass a tuple or None) but C code — numpy, say —
        # importing its own dependency with PyImport_Import, which takes __import__ from the
        # builtins of whatever Python frame is current: the candidate's. The module goes back to
        # that C code, never to the candidate, and candidate code cannot call __import__ itself.
        return builtins.__import__(name, globals, locals, fromlist, level)
    if level != 0:
        _deny("relative imports are not allowed")
    fromlist = tuple(fromlist or ())
    if name == "scipy" and fromlist and all(n in SCIPY_READABLE for n in fromlist):
        pass
    elif name not in ALLOWED_IMPORTS:
        _deny(f"import of {name!r} is not allowed")
    mod = sys.modules.get(name)
    if mod is None:  # only what was loaded before lock-down; nothing is read from disk now
        _deny(f"import of {name!r} is not available")
    for n in fromlist:
        _guarded_getattr(mod, n)  # `from m import x` reads x natively: check it here
    return mod if fromlist else sys.modules[name.partition(".")[0]]


def class_hook(name: str, bases: tuple[Any, ...], ns: dict[str, Any], **kw: Any) -> type:
    """RestrictedPython's `__metaclass__`: every class statement of the candidate. Bases are
    limited to plain Python types (no numpy / scipy classes, no metaclasses), so the candidate's
    own objects never carry foreign native attributes."""
    for b in bases:
        ok = (isinstance(b, type) and not issubclass(b, type) and id(b) not in _DENIED_IDS
              and (b.__module__ == CANDIDATE_MODULE or b.__module__ in _SAFE_BASE_MODULES))
        if not ok:
            _deny(f"class {name} may not derive from {getattr(b, '__name__', b)!r}")
    return type(name, bases, ns, **kw)


_SAFE_BASE_MODULES = frozenset({"builtins", "collections", "collections.abc", "_collections_abc",
                                "typing", "abc", "dataclasses"})


class _SafeFormatter(string.Formatter):
    """str.format with every `{0.attr}` field read through the attribute guard."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        import _string

        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = _guarded_getattr(obj, key) if is_attr else obj[key]
        return obj, first


def _safe_format(obj: Any, name: str) -> Any:
    if isinstance(obj, type):
        _deny("str.format cannot be used unbound in the sandbox")
    fmt = _SafeFormatter()
    text = str(obj)
    if name == "format":
        return lambda *args, **kwargs: fmt.vformat(text, args, kwargs)
    return lambda mapping: fmt.vformat(text, (), mapping)


class _PrintCollector:
    """RestrictedPython's `_print_`: print() of candidate code goes to the bounded sink."""

    __slots__ = ()

    def __init__(self, _getattr_: Any = None) -> None:
        pass

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs["file"] = STATE.sink
        print(*objects, **kwargs)

    def __call__(self) -> str:
        return ""


_IOPS = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift, ">>=": operator.irshift,
    "|=": operator.ior, "^=": operator.ixor, "&=": operator.iand, "//=": operator.ifloordiv,
    "@=": operator.imatmul,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _IOPS[op](x, y)


def _apply(f: Any, *args: Any, **kwargs: Any) -> Any:
    return f(*args, **kwargs)


def checked(value: Any) -> Any:
    """A value the candidate obtained by a call, iteration or unpacking: checked as an attribute
    read's value is (no module that is not allowed, no denied object such as a metaclass). A call
    of an unshadowed builtin of admission.UNCHECKED_BUILTINS by its name does not come here."""
    if type(value) in _PLAIN_TYPES:
        return value
    if type(value) is ModuleType or id(value) in _DENIED_IDS:
        return _check_value(value, "this value")
    return value


def _checked_iter(obj: Any) -> Any:
    for value in iter(obj):
        if type(value) not in _PLAIN_TYPES and (
                type(value) is ModuleType or id(value) in _DENIED_IDS):
            value = _check_value(value, "this value")
        yield value


def _getiter(obj: Any) -> Any:
    # Containers of plain values (the common case in a controller's loops) need no per-item
    # check: nothing denied can be in a numpy array of numbers or a range.
    if type(obj) is range or (isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf"):
        return iter(obj)
    return _checked_iter(obj)


def _unpack(it: Any, spec: Any, _getiter_: Any) -> Any:
    return _getiter(it)


def _iter_unpack(it: Any, spec: Any, _getiter_: Any) -> Any:
    for item in _getiter(it):
        yield _getiter(item)


_SAFE_BUILTIN_NAMES = [
    "None", "False", "True", "Ellipsis", "NotImplemented", "abs", "all", "any", "ascii", "bin",
    "bool", "bytearray", "bytes", "callable", "chr", "classmethod", "complex", "dict", "divmod",
    "enumerate", "filter", "float", "format", "frozenset", "hash", "hex", "int",
    "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next", "object",
    "oct", "ord", "pow", "property", "range", "repr", "reversed", "round", "set", "slice",
    "sorted", "staticmethod", "str", "sum", "super", "tuple", "zip",
]


def candidate_builtins() -> dict[str, Any]:
    b: dict[str, Any] = {n: getattr(builtins, n) for n in _SAFE_BUILTIN_NAMES}
    for n, v in vars(builtins).items():
        if isinstance(v, type) and issubclass(v, BaseException) and not n.startswith("_"):
            b[n] = v
    b.update({
        "__build_class__": builtins.__build_class__,
        "__import__": _guarded_import,
        "getattr": _guarded_getattr,
        "hasattr": _guarded_hasattr,
        "setattr": _guarded_setattr,
        "delattr": _guarded_delattr,
        "_getattr_": _guarded_getattr,
        "_getitem_": _guarded_getitem,
        "_getiter_": _getiter,
        "_checked_": checked,
        "_write_": _guarded_write,
        "_inplacevar_": _inplacevar,
        "_apply_": _apply,
        "_iter_unpack_sequence_": _iter_unpack,
        "_unpack_sequence_": _unpack,
        "_print_": _PrintCollector,
    })
    # The transform calls these without `_checked_` (admission.UNCHECKED_BUILTINS), trusting
    # each name to be the builtin itself.
    for n in UNCHECKED_BUILTINS:
        if b.get(n) is not getattr(builtins, n):
            raise RuntimeError(f"candidate builtin {n!r} is not builtins.{n}")
    return b


def _metaclasses() -> list[type]:
    """Every subclass of `type` (every metaclass), transitively. From the classes themselves,
    not the collector: gc.get_objects() leaves out what gc.freeze() moved to the permanent
    generation (`autotts eval` freezes what its start-up made), so a frozen ABCMeta would not be
    denied."""
    out: list[type] = []
    seen: set[int] = set()
    todo: list[type] = [type]
    while todo:
        for sub in type.__subclasses__(todo.pop()):
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                todo.append(sub)
    return out


def deny_objects() -> None:
    """Objects no attribute read may return, whatever path reaches them."""
    import dataclasses
    import functools
    import typing

    objs: list[Any] = [getattr(builtins, n) for n in (
        "open", "eval", "exec", "compile", "__import__", "globals", "locals", "vars", "dir",
        "input", "breakpoint", "getattr", "setattr", "delattr", "hasattr", "memoryview", "type",
        "print", "__build_class__",
    )]
    objs += [np.ndarray]  # replaced by _SafeNdarray
    for name in DENIED_MODULE_ATTRS["numpy"]:
        if name in np.__dict__:
            objs.append(np.__dict__[name])
    objs += [functools.singledispatch, functools.singledispatchmethod, functools.update_wrapper,
             functools.wraps, typing.get_type_hints, dataclasses.make_dataclass]
    from numpy.lib import stride_tricks

    objs.append(stride_tricks.as_strided)
    if "scipy" in sys.modules:
        objs.append(getattr(sys.modules["scipy"], "LowLevelCallable", None))
    import types

    objs += [v for v in vars(types).values() if isinstance(v, type)]
    # Every metaclass in existence: calling one with a plain dict builds a class whose dunders
    # (an __array_interface__ with an address, say) no guard ever sees. Candidate code cannot
    # make new ones (no class keywords, no `type` bases).
    objs += _metaclasses()
    objs += [type]
    # Every module namespace (a function's globals, reached through any alias of __globals__)
    # and every module other than the allowed ones.
    for m in list(sys.modules.values()):
        if isinstance(m, ModuleType):
            _MODULE_TYPES.add(type(m))
        d = getattr(m, "__dict__", None)
        if isinstance(d, dict):
            objs.append(d)
    for o in objs:
        if o is not None and not isinstance(o, int | str | float | bool):
            _DENIED_KEEP.append(o)
            _DENIED_IDS.add(id(o))
    _plain_types()


def _plain_candidates() -> set[type]:
    """The types whose values a controller reads most: numbers, strings, containers it made,
    arrays, bound methods of its own objects."""
    out: set[type] = {int, float, bool, complex, str, bytes, type(None), tuple, list, range,
                      slice, np.ndarray, MethodType}
    out.update(t for t in np.sctypeDict.values()
               if isinstance(t, type) and issubclass(t, np.number | np.bool_))
    return out


def _plain_types() -> None:
    """Build _PLAIN_TYPES after the denied objects are known (and again whenever more are): the
    candidates less the type of every denied object and every module type, so that a value whose
    type is in it can be neither (the full check would pass it too). A set lookup hashes and
    compares the value's type with its metaclass's __hash__ / __eq__: every metaclass in
    existence is checked to keep type's own (identity), else there is no fast path at all."""
    global _PLAIN_TYPES
    for meta in [type, *_metaclasses()]:
        if (meta.__hash__ is not type.__hash__ or meta.__eq__ is not type.__eq__
                or meta.__ne__ is not type.__ne__):
            _PLAIN_TYPES = frozenset()
            return
    denied_types = {type(o) for o in _DENIED_KEEP}
    _PLAIN_TYPES = frozenset(t for t in _plain_candidates()
                             if t not in denied_types and t not in _MODULE_TYPES
                             and not issubclass(t, ModuleType))
