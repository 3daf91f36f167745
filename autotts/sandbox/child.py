"""The sandbox process (DESIGN §7): runs one untrusted controller over gold-free replay data.

Started by `autotts.sandbox` as `python -I -c ...` in a new session, with a scrubbed environment
and an empty temporary working directory. It reads the whole request from stdin (controller source,
β grid, protocol, the gold-free arrays of each store) *before* locking itself down:

  * a fresh network namespace (no interfaces), chroot into the empty working directory and a
    switch to `nobody` when it runs as root, no new privileges, parent-death signal;
  * rlimits: CPU time, address space, no new processes, no new file descriptors, no file writes,
    no core dumps.

Then it compiles the candidate with RestrictedPython (autotts.admission) and executes it with
guarded builtins: imports only from the allow-list, attribute reads through `_getattr_` (no
private names, no module that is not allowed, no file / raw-memory doors of numpy), writes only to
objects the candidate owns. Any attempt to pass a guard is recorded and ends the run with a
`forbidden` verdict even if the candidate catches the exception.

Episodes run through `autotts.evaluate.run_block`, the evaluator's own loop, so answers, tokens and
error records are those of in-process evaluation. Results go back over a dedicated pipe as frames
(JSON header + raw int arrays); nothing is pickled in either direction. The candidate's print()
goes to a bounded buffer; the process's own stdout / stderr are drained and truncated by the
parent.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import operator
import string
import struct
import sys
import traceback
from collections import Counter, OrderedDict, defaultdict, deque
from types import FunctionType, ModuleType
from typing import Any, BinaryIO

import numpy as np

from autotts.admission import (
    ALLOWED_IMPORTS,
    ALLOWED_MODULE_VALUES,
    DENIED_ATTRS,
    DENIED_MODULE_ATTRS,
    SCIPY_READABLE,
    Verdict,
    admit,
    compile_candidate,
    imported_modules,
)

CANDIDATE_MODULE = "candidate"
_NUMPY_SUBMODULES = frozenset({"numpy.linalg", "numpy.random", "numpy.fft"})

# ---- frames: how parent and child talk (JSON header + raw arrays, never pickle) ---------------

FRAME_DTYPES = frozenset({"<i4", "<i8", "|u1", "|b1"})
_LEN = struct.Struct("<Q")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.bool_):
        return o.item()
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return repr(o)[:200]


def _strict_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.bool_ | np.floating):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def pack_frame(header: dict[str, Any], arrays: list[np.ndarray] | tuple[()] = (),
               *, strict: bool = False) -> bytes:
    """A frame: 8-byte length, JSON header (with the arrays' dtypes and shapes), raw arrays.
    strict: refuse values that are not plain JSON (else they are written as their repr)."""
    arrs = [np.ascontiguousarray(a) for a in arrays]
    head = dict(header, arrays=[[a.dtype.str, list(a.shape)] for a in arrs])
    raw = json.dumps(head, separators=(",", ":"),
                     default=_strict_default if strict else _json_default).encode("utf-8")
    return b"".join([_LEN.pack(len(raw)), raw, *(a.tobytes() for a in arrs)])


class FrameError(Exception):
    """A frame that is malformed or larger than allowed."""


def _array_specs(header: dict[str, Any],
                 max_arrays: int = 8) -> list[tuple[np.dtype, tuple[int, ...], int]]:
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) > max_arrays:
        raise FrameError("bad array list")
    out = []
    for spec in specs:
        if (not isinstance(spec, list) or len(spec) != 2 or spec[0] not in FRAME_DTYPES
                or not isinstance(spec[1], list) or len(spec[1]) > 2
                or not all(isinstance(d, int) and 0 <= d < 2**40 for d in spec[1])):
            raise FrameError(f"bad array spec {spec!r:.100}")
        dt = np.dtype(spec[0])
        shape = tuple(spec[1])
        out.append((dt, shape, int(np.prod(shape, dtype=np.int64)) * dt.itemsize))
    return out


class FrameReader:
    """Incremental parser of frames from an untrusted byte stream, with a size cap."""

    def __init__(self, max_bytes: int) -> None:
        self.buf = bytearray()
        self.max_bytes = max_bytes
        self.total = 0

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
        self.total += len(data)
        if self.total > self.max_bytes:
            raise FrameError(f"the sandbox sent more than {self.max_bytes} bytes")
        self.buf += data
        frames = []
        while len(self.buf) >= _LEN.size:
            (hlen,) = _LEN.unpack_from(self.buf)
            if hlen > self.max_bytes:
                raise FrameError("frame header too large")
            if len(self.buf) < _LEN.size + hlen:
                break
            try:
                header = json.loads(bytes(self.buf[_LEN.size : _LEN.size + hlen]))
            except (ValueError, RecursionError) as e:
                raise FrameError(f"bad frame header: {e}") from None
            if not isinstance(header, dict):
                raise FrameError("frame header is not an object")
            specs = _array_specs(header)
            need = _LEN.size + hlen + sum(n for _, _, n in specs)
            if len(self.buf) < need:
                break
            pos = _LEN.size + hlen
            arrays = []
            for dt, shape, n in specs:
                arrays.append(np.frombuffer(bytes(self.buf[pos : pos + n]), dtype=dt).reshape(shape))
                pos += n
            del self.buf[:need]
            frames.append((header, arrays))
        return frames


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise EOFError("request truncated")
    return data


def read_frame(f: BinaryIO) -> tuple[dict[str, Any], list[np.ndarray]]:
    (hlen,) = _LEN.unpack(_read_exact(f, _LEN.size))
    header = json.loads(_read_exact(f, hlen))
    arrays = [np.frombuffer(_read_exact(f, n), dtype=dt).reshape(shape)
              for dt, shape, n in _array_specs(header, max_arrays=1 << 16)]
    return header, arrays


# ---- progress record shared with the parent (memfd), for per-episode timeouts ----------------

# slots: phase, unit, episode within unit, heartbeat
PH_BOOT, PH_MODULE, PH_SCHEDULE, PH_IDLE, PH_UNIT, PH_DONE, PH_SEND = range(7)
PROGRESS_SLOTS = 8


class _State:
    """Everything the guards and the episode wrapper share. Candidate code cannot reach it."""

    def __init__(self) -> None:
        self.filename = "<candidate>"
        self.source_lines: list[str] = []
        self.violation: tuple[str, int | None] | None = None
        self.fatal_memory: str | None = None
        self.first_tb: str | None = None
        self.current_ep: Any = None
        self.progress: np.ndarray = np.zeros(PROGRESS_SLOTS, dtype=np.int64)
        self.sink = _PrintSink(64 * 1024)


class _PrintSink:
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


_S = _State()


# ---- guards ----------------------------------------------------------------------------------


class SandboxViolation(Exception):
    """Raised by a guard. Recorded before raising, so catching it does not help the candidate."""


def _candidate_line() -> int | None:
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename == _S.filename:
            return f.f_lineno
        f = f.f_back
    return None


def _deny(message: str) -> None:
    if _S.violation is None:
        _S.violation = (message, _candidate_line())
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


def _class_hook(name: str, bases: tuple[Any, ...], ns: dict[str, Any], **kw: Any) -> type:
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
        kwargs["file"] = _S.sink
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


def _unpack(it: Any, spec: Any, _getiter_: Any) -> Any:
    # Nothing the candidate can iterate needs a per-item guard (`_getitem_` is plain indexing),
    # so unpacking is Python's own.
    return it


_SAFE_BUILTIN_NAMES = [
    "None", "False", "True", "Ellipsis", "NotImplemented", "abs", "all", "any", "ascii", "bin",
    "bool", "bytearray", "bytes", "callable", "chr", "classmethod", "complex", "dict", "divmod",
    "enumerate", "filter", "float", "format", "frozenset", "hash", "hex", "id", "int",
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
        "_getiter_": iter,
        "_write_": _guarded_write,
        "_inplacevar_": _inplacevar,
        "_apply_": _apply,
        "_iter_unpack_sequence_": _unpack,
        "_unpack_sequence_": _unpack,
        "_print_": _PrintCollector,
    })
    return b


def _deny_objects() -> None:
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


def _refuse_copy(self: Any, *args: Any) -> Any:
    from autotts.engine import InvalidAction

    raise InvalidAction("episode handles cannot be copied")


def _uncopyable_handles() -> None:
    """A deep copy of an episode (dataclasses.asdict deep-copies what it does not know) would be
    a second, free handle on the same question: explore on the copy, act on the original.
    In this process, episodes and questions refuse to be copied."""
    from autotts.engine import Episode, Question

    for cls in (Episode, Question):
        for name in ("__copy__", "__deepcopy__", "__reduce__", "__reduce_ex__", "__getstate__"):
            setattr(cls, name, _refuse_copy)


# ---- lock-down -------------------------------------------------------------------------------


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
    cap(resource.RLIMIT_NPROC, 0)
    cap(resource.RLIMIT_NOFILE, top + 1)
    cpu = max(1, int(limits.get("cpu_seconds", 600)))
    cap(resource.RLIMIT_CPU, cpu, cpu + 2)
    mem = int(limits.get("memory_mb", 1024)) * 1024 * 1024
    if base_vm:
        cap(resource.RLIMIT_AS, base_vm + mem)
    return applied


# ---- running the candidate -------------------------------------------------------------------


class _Fatal(BaseException):
    """Ends the run with a verdict; a BaseException so that run_block does not record it."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class _ClosedQuestion:
    """Put in place of an ended episode's question: a handle kept past its episode reveals
    nothing more and costs nothing more (the replay's accounting cannot be skipped)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        from autotts.engine import InvalidAction

        raise InvalidAction("this episode handle belongs to an episode that has ended")


_CLOSED = _ClosedQuestion()
_AS_EXCEPTION: dict[type, type] = {}


def _as_exception(e: BaseException) -> Exception:
    """SystemExit, KeyboardInterrupt, GeneratorExit ... raised by candidate code become an
    ordinary controller exception of the same name (the evaluator records it, nothing exits)."""
    t = type(e)
    cls = _AS_EXCEPTION.get(t)
    if cls is None:
        cls = _AS_EXCEPTION[t] = type(t.__name__, (Exception,), {})
    new = cls(*e.args)
    return new.with_traceback(e.__traceback__)


def candidate_traceback(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == _S.filename]
    lines = []
    for f in frames[-6:]:
        text = ""
        if f.lineno and 0 < f.lineno <= len(_S.source_lines):
            text = _S.source_lines[f.lineno - 1].strip()
        lines.append(f"line {f.lineno}, in {f.name}: {text}")
    try:
        msg = str(exc)
    except Exception:
        msg = "?"
    lines.append(f"{type(exc).__name__}: {msg[:500]}")
    return "\n".join(lines)


def _check_violation(context: dict[str, Any]) -> None:
    if _S.violation is not None:
        message, line = _S.violation
        tb = None
        if line and 0 < line <= len(_S.source_lines):
            tb = f"line {line}: {_S.source_lines[line - 1].strip()}"
        raise _Fatal(Verdict("forbidden", message, tb, {**context, "line": line}))


def _exception_verdict(e: BaseException, context: dict[str, Any]) -> Verdict:
    _check_violation(context)
    if isinstance(e, MemoryError):
        return Verdict("memory", "memory limit exceeded (MemoryError)", candidate_traceback(e),
                       context)
    from autotts.engine import InvalidAction

    kind = "invalid_action" if isinstance(e, InvalidAction) else "exception"
    try:
        text = str(e)
    except Exception:
        text = "?"
    return Verdict(kind, f"{type(e).__name__}: {text[:300]}", candidate_traceback(e), context)


def make_wrapper(cls: type, unit_ctx: dict[str, Any]) -> type:
    """The class run_block instantiates per episode: it bumps the progress record, closes the
    previous episode's handle, and turns what must not pass into verdicts."""
    progress = _S.progress

    class Episodic:
        NAME = cls.NAME
        __slots__ = ("inner",)

        def __init__(self, **config: Any) -> None:
            progress[2] += 1
            progress[3] += 1
            prev = _S.current_ep
            if prev is not None:
                prev._q = _CLOSED
                _S.current_ep = None
            self.inner = cls(**config)

        def run(self, ep: Any) -> Any:
            _S.current_ep = ep
            try:
                ans = self.inner.run(ep)
            except BaseException as e:
                _check_violation(unit_ctx)
                if isinstance(e, MemoryError):
                    raise _Fatal(Verdict("memory", "memory limit exceeded (MemoryError)",
                                         candidate_traceback(e), dict(unit_ctx))) from None
                if _S.first_tb is None:
                    _S.first_tb = candidate_traceback(e)
                if not isinstance(e, Exception):
                    raise _as_exception(e) from None
                raise
            _check_violation(unit_ctx)
            return ans

    return Episodic


def _plain(v: Any) -> Any:
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


class _Out:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, header: dict[str, Any], arrays: list[np.ndarray] | tuple[()] = ()) -> None:
        import os

        view = memoryview(pack_frame(header, arrays))
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def _serialize_traces(traces: list[dict[str, Any]], budget: list[int]) -> tuple[bytes, bool]:
    parts = []
    truncated = False
    for t in traces:
        if budget[0] <= 0:
            truncated = True
            break
        try:
            line = json.dumps(t, separators=(",", ":"), default=_json_default)
        except (ValueError, TypeError, RecursionError) as e:
            line = json.dumps({"question": t.get("question"), "draw": t.get("draw"),
                               "events": [], "error": f"trace not serializable: {e}"[:200]})
        data = line.encode("utf-8", "replace") + b"\n"
        budget[0] -= len(data)
        parts.append(data)
    return b"".join(parts), truncated


def _run(req: dict[str, Any], arrays: list[np.ndarray], out: _Out) -> None:
    from autotts.controller import ControllerSpec, find_controller_class
    from autotts.errors import ConfigError, ControllerError
    from autotts.evaluate import Protocol, _Questions, run_block
    from autotts.store import ReplayData

    source: str = req["source"]
    filename: str = req["filename"]
    limits: dict[str, Any] = req["limits"]
    _S.filename = filename
    _S.source_lines = source.splitlines()
    _S.sink = _PrintSink(int(limits.get("max_output_bytes", 64 * 1024)))
    progress = _S.progress

    # Everything that needs the file system happens now, before lock-down.
    verdict = admit(source, filename) if req.get("admit", True) else None
    if verdict is not None:
        raise _Fatal(verdict)
    # numpy's submodules load lazily, and nothing loads once locked down: load the allowed ones.
    for mod in sorted((set(imported_modules(source)) | _NUMPY_SUBMODULES) & ALLOWED_IMPORTS):
        __import__(mod)
    code, errors = compile_candidate(source, filename)
    if code is None:
        raise _Fatal(Verdict("forbidden", errors[0] if errors else "does not compile"))
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    _deny_objects()
    _uncopyable_handles()
    questions = []
    it = iter(arrays)
    for st in req["stores"]:
        fields = {str(f): next(it) for f in st["arrays"]}
        data = ReplayData(name=st["name"], delta=int(st["delta"]), **fields)
        questions.append(_Questions(data))
    names = [st["name"] for st in req["stores"]]
    proto = Protocol(**req["proto"])
    isolation = lockdown(limits)

    # The candidate's module.
    progress[0] = PH_MODULE
    progress[3] += 1
    module = ModuleType(CANDIDATE_MODULE)
    g = module.__dict__
    g["__builtins__"] = candidate_builtins()
    g["__metaclass__"] = _class_hook
    g["__name__"] = CANDIDATE_MODULE
    sys.modules[CANDIDATE_MODULE] = module  # dataclasses looks classes' modules up there
    ctx: dict[str, Any] = {"phase": "module"}
    try:
        exec(code, g)
    except BaseException as e:
        raise _Fatal(_exception_verdict(e, ctx)) from None
    _check_violation(ctx)
    try:
        cls = find_controller_class(module, filename)
    except ControllerError as e:
        _check_violation(ctx)
        raise _Fatal(Verdict("interface", str(e).replace(f"{filename}: ", ""))) from None
    except BaseException as e:
        raise _Fatal(_exception_verdict(e, ctx)) from None
    spec = ControllerSpec(name=cls.NAME, path=filename, cls=cls)

    # Knobs for each β, computed here: schedule() is candidate code.
    progress[0] = PH_SCHEDULE
    configs, plain = [], []
    for r, beta in enumerate(req["betas"]):
        progress[1] = r
        progress[3] += 1
        ctx = {"phase": "schedule", "beta": beta}
        try:
            cfg = spec.config(beta, req["overrides"])
        except ConfigError as e:
            _check_violation(ctx)
            out.send({"type": "config_error", "message": str(e)[:1000]})
            return
        except ControllerError as e:
            _check_violation(ctx)
            raise _Fatal(Verdict("interface", str(e).replace(f"{filename}: ", "")[:1000],
                                 context=ctx)) from None
        except BaseException as e:
            raise _Fatal(_exception_verdict(e, ctx)) from None
        _check_violation(ctx)
        p = {str(k): _plain(v) for k, v in cfg.items()}
        try:
            json.dumps(p, allow_nan=True)
        except (TypeError, ValueError):
            raise _Fatal(Verdict("interface", f"schedule({beta}) returned knob values that are "
                                 "not numbers, strings or booleans", context=ctx)) from None
        configs.append(cfg)
        plain.append(p)
    out.send({"type": "configs", "name": cls.NAME, "configs": plain, "isolation": isolation})

    trace_budget = [int(limits.get("max_trace_bytes", 256 << 20))]
    traces_truncated = False
    stdin = sys.stdin.buffer
    while True:
        progress[0] = PH_IDLE
        line = stdin.readline()
        if not line or line.strip() == b"stop":
            break
        u = json.loads(line)
        i, s, r, lo, hi = (int(u[k]) for k in ("unit", "s", "r", "lo", "hi"))
        progress[1] = i
        progress[2] = 0
        progress[0] = PH_UNIT
        progress[3] += 1
        unit_ctx = {"store": names[s], "beta": req["betas"][r], "config": plain[r]}
        wspec = ControllerSpec(name=cls.NAME, path=filename, cls=make_wrapper(cls, unit_ctx))
        _S.first_tb = None
        try:
            res = run_block(questions[s], wspec, configs[r], proto, lo, hi, store_name=names[s],
                            on_error="record", trace=bool(req["traces"]))
        except _Fatal as f:
            nq = questions[s].data.num_questions
            k = max(0, int(progress[2]) - 1)
            f.verdict.context.update(draw=lo + k // nq, question=k % nq)
            raise
        finally:
            if _S.current_ep is not None:
                _S.current_ep._q = _CLOSED
                _S.current_ep = None
        progress[0] = PH_SEND  # the harness's own work from here: not an episode to time
        _check_violation(unit_ctx)
        for e in res.errors:  # a candidate controls exception texts: keep them short
            e["message"] = str(e["message"])[:1000]
        if res.errors and req["on_error"] == "raise":
            e0 = res.errors[0]
            context = {**unit_ctx, "question": e0["question"], "draw": e0["draw"],
                       "step": e0["step"]}
            tb = _S.first_tb if e0["kind"] != "non_answer" else None
            raise _Fatal(Verdict(e0["kind"], str(e0["message"])[:1000], tb, context))
        trace_bytes = b""
        if res.traces is not None:
            trace_bytes, cut = _serialize_traces(res.traces, trace_budget)
            traces_truncated = traces_truncated or cut
        out.send(
            {"type": "unit", "unit": i, "errors": res.errors},
            [res.answers.astype("<i4"), res.tokens.astype("<i8"), res.probes.astype("<i4"),
             res.opened.astype("<i4"), np.frombuffer(trace_bytes, dtype=np.uint8)],
        )
    progress[0] = PH_DONE
    progress[3] += 1
    out.send({"type": "done", "stdout": _S.sink.text(), "stdout_dropped": _S.sink.dropped,
              "traces_truncated": traces_truncated})


def main(argv: list[str] | None = None) -> None:
    import mmap
    import os

    argv = list(sys.argv if argv is None else argv)
    out = _Out(int(argv[1]))
    try:
        pfd = int(argv[2])
        mm = mmap.mmap(pfd, PROGRESS_SLOTS * 8)
        os.close(pfd)
        _S.progress = np.frombuffer(mm, dtype=np.int64)
    except (OSError, ValueError, IndexError):
        pass
    try:
        req, arrays = read_frame(sys.stdin.buffer)
        _run(req, arrays, out)
    except _Fatal as f:
        v = f.verdict
        v.context.setdefault("stdout", _S.sink.text()[-2000:])
        out.send({"type": "verdict", "verdict": v.to_dict()})
    except MemoryError:
        try:
            out.send({"type": "verdict", "verdict": Verdict(
                "memory", "memory limit exceeded (MemoryError)").to_dict()})
        except BaseException:
            os._exit(3)
    except BaseException as e:  # a bug of the sandbox itself, or a broken pipe
        try:
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()[:1000]
            out.send({"type": "verdict", "verdict": Verdict("crash", f"sandbox error: {msg}")
                      .to_dict()})
        except BaseException:
            os._exit(4)
    os._exit(0)


if __name__ == "__main__":
    main()
