"""Static admission of untrusted controller code (DESIGN §7) and the typed verdicts of the sandbox.

`admit(source, filename)` decides, without running anything, whether a candidate may be executed:
it parses, checks imports against an allow-list, rejects names that reach outside the language
(eval, exec, open, getattr with a computed name, ...), compiles with RestrictedPython's transformer
(no names or attributes beginning with an underscore; every attribute read, item write and
iteration routed through guard functions the sandbox child supplies), and checks the controller
contract of DESIGN §5. The same module gives the child the compiler and the allow-lists, so the
static and the run-time rules cannot drift apart.
"""

from __future__ import annotations

import ast
import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer

VERDICT_KINDS = (
    "syntax",  # the file does not parse
    "forbidden",  # a forbidden import, name or attribute (statically, or caught at run time)
    "interface",  # not exactly one controller class with NAME / schedule / run (DESIGN §5)
    "exception",  # the controller raised (with episode context and its own lines)
    "timeout",  # wall-clock, per-episode or CPU-time limit
    "memory",  # address-space limit (MemoryError) or killed for memory
    "invalid_action",  # an action the replay semantics do not admit
    "non_answer",  # run() returned something that is not an answer class
    "non_monotone",  # mean tokens fall as β grows, beyond standard error (measured)
    "output_limit",  # the candidate tried to make the parent hold or print too much
    "crash",  # the sandbox process died for another reason, or broke the wire protocol
)


@dataclass
class Verdict:
    """Why a candidate failed: a kind from VERDICT_KINDS, a one-line message, where relevant a
    traceback restricted to the candidate's own lines, and context (store, β, question, draw,
    step, line, ...)."""

    kind: str
    message: str
    traceback: str | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise ValueError(f"unknown verdict kind {self.kind!r}")

    def __str__(self) -> str:
        where = ", ".join(
            f"{k} {v}" for k, v in self.context.items()
            if k in ("store", "beta", "question", "draw", "step", "line") and v is not None
        )
        return f"{self.kind}: {self.message}" + (f" ({where})" if where else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "traceback": self.traceback,
                "context": dict(self.context)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        kind = d.get("kind")
        if kind not in VERDICT_KINDS:
            kind = "crash"
        tb = d.get("traceback")
        ctx = d.get("context")
        return cls(str(kind), str(d.get("message", ""))[:4000],
                   None if tb is None else str(tb)[:8000],
                   ctx if isinstance(ctx, dict) else {})


# ---- the allow-lists -------------------------------------------------------------------------

# Modules a candidate may import, exactly (issue 5): the standard library's pure-computation
# modules, numpy (with its linear-algebra, random and FFT submodules) and scipy.stats / special.
ALLOWED_IMPORTS = frozenset({
    "math", "statistics", "collections", "collections.abc", "itertools", "functools", "heapq",
    "bisect", "dataclasses", "typing", "numpy", "numpy.linalg", "numpy.random", "numpy.fft",
    "scipy.stats", "scipy.special",
})

# Modules a candidate may hold as values (reached through attributes of allowed ones). `scipy`
# itself is bound by `import scipy.stats`; only its `stats` and `special` attributes are readable.
ALLOWED_MODULE_VALUES = ALLOWED_IMPORTS | {"scipy"}
SCIPY_READABLE = frozenset({"stats", "special"})

# Attributes of allowed modules that reach files, raw memory, other processes or code evaluation.
DENIED_MODULE_ATTRS: dict[str, frozenset[str]] = {
    "numpy": frozenset({
        # file I/O
        "load", "save", "savez", "savez_compressed", "loadtxt", "savetxt", "genfromtxt",
        "fromfile", "fromregex", "memmap", "DataSource", "tofile",
        # raw memory and foreign functions
        "ctypeslib", "lib", "recarray", "chararray", "rec", "char", "core", "void", "ma",
        "strings", "typing", "_core",
        # build / test machinery, printing to the real stdout, paths
        "testing", "f2py", "distutils", "show_config", "show_runtime", "get_include", "info",
        "test",
    }),
    "functools": frozenset({"singledispatch", "singledispatchmethod", "update_wrapper", "wraps"}),
    "typing": frozenset({"get_type_hints"}),  # evaluates string annotations with eval()
    "dataclasses": frozenset({"make_dataclass"}),  # arbitrary class namespaces (dunders)
    "numpy.random": frozenset({"bit_generator", "mtrand"}),
}

# Attribute names no foreign object may be read through: RestrictedPython's frame / code /
# generator internals, and numpy's doors to raw memory and files.
DENIED_ATTRS = frozenset(INSPECT_ATTRIBUTES) | {
    "mro", "ctypes", "cffi", "capsule", "tofile", "dump", "dumps", "ctypeslib", "f2py",
    "lib", "testing", "distutils", "memmap", "LowLevelCallable", "as_strided",
    # Cython functions (numpy.random, scipy) keep Python 2 aliases of their dunder attributes:
    # func_globals is the module namespace, with __builtins__ in it.
    "func_globals", "func_code", "func_closure", "func_dict", "func_defaults", "im_func",
    "im_self", "im_class",
}

# Builtins a candidate may not even name: code evaluation, namespaces, I/O, introspection.
FORBIDDEN_NAMES = {
    "eval": "code evaluation is not available",
    "exec": "code evaluation is not available",
    "compile": "code evaluation is not available",
    "open": "file access is not available",
    "input": "console input is not available",
    "globals": "namespace access is not available",
    "locals": "namespace access is not available",
    "vars": "namespace access is not available",
    "dir": "introspection is not available",
    "type": "type() is not available (use isinstance)",
    "memoryview": "raw memory access is not available",
    "id": "object addresses are not available",
    "breakpoint": "the debugger is not available",
    "help": "help() is not available",
    "exit": "exit() is not available (return an answer instead)",
    "quit": "quit() is not available (return an answer instead)",
    "copyright": "not available",
    "credits": "not available",
    "license": "not available",
}

# getattr / hasattr / setattr / delattr are guarded at run time, but must name the attribute with
# a string literal so that admission can check it.
_ATTR_BUILTINS = ("getattr", "hasattr", "setattr", "delattr")

# Builtins whose calls the transform leaves without `_checked_` where the module never binds
# their name (docs/sandbox.md, "Calls that need no check"): each returns an instance of int, float
# or str or raises, whatever its arguments' dunders do (Python converts or refuses what they
# return), and no such instance is a module or a denied object.
UNCHECKED_BUILTINS = frozenset({
    "len", "int", "float", "bool", "str", "repr", "ascii", "format", "isinstance", "issubclass",
    "callable", "hash", "ord", "chr", "hex", "oct", "bin",
})

MAX_SOURCE_BYTES = 256 * 1024
TOO_DEEP = ("the code is nested too deeply to check (for example a very long if/elif chain): "
            "use a dict or a list instead")


# ---- RestrictedPython policy -----------------------------------------------------------------


class CandidatePolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer with two additions that controller code needs and that do
    not widen what it can reach:

    * `x.a += v` and `x[k] += v` (RestrictedPython refuses them): kept as Python's own
      read-modify-write, with the target object routed through the write guard `_write_`, which
      only hands back objects the candidate may modify. Evaluation order is Python's.
    * annotated assignments (`counts: dict = {}`): the target is checked and guarded as in a plain
      assignment; the annotation is an ordinary guarded expression.
    """

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        if isinstance(node.target, ast.Attribute | ast.Subscript):
            return self.node_contents_visit(node)
        return super().visit_AugAssign(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        return self.node_contents_visit(node)

    # Names of UNCHECKED_BUILTINS that the module being compiled only ever reads
    # (`unshadowed_names`); compile_candidate sets it. Empty: every call is checked.
    unchecked_calls: frozenset[str] = frozenset()

    def visit_Call(self, node: ast.Call) -> Any:
        """Every call's result goes through `_checked_` (a value a call returns is checked as an
        attribute read's is: a denied object cannot be fetched by calling something that returns
        it). `super()` stays a bare call: its zero-argument form needs to be one. So does a call
        of a builtin of `unchecked_calls` by its name (with */** arguments RestrictedPython makes
        it an `_apply_` call, which is checked): nothing but that builtin can be under the name,
        and what it returns needs no check."""
        node = super().visit_Call(node)
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name)
            and (node.func.id == "super" or node.func.id in self.unchecked_calls)
        ):
            return ast.copy_location(
                ast.Call(func=ast.Name("_checked_", ast.Load()), args=[node], keywords=[]), node)
        return node


_DEPTH_LOCK = threading.RLock()
ADMISSION_RECURSION_LIMIT = 20_000  # a few thousand elif branches; the parser's own cap is lower


@contextlib.contextmanager
def _deep_recursion() -> Iterator[None]:
    """Python's default recursion limit (1000) stops the AST transformer and the compiler at a
    few hundred nested statements (a long if/elif chain is one nesting level per branch). Raise it
    for the duration of the check only: elsewhere (parsing the child's JSON, say) the default
    keeps C recursion far from the stack's end."""
    with _DEPTH_LOCK:
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, ADMISSION_RECURSION_LIMIT))
        try:
            yield
        finally:
            sys.setrecursionlimit(old)


def unshadowed_names(tree: ast.AST, names: frozenset[str]) -> frozenset[str]:
    """Those of `names` that the module only ever reads: every occurrence of the identifier
    anywhere in it is an `ast.Name` in Load context. Any other occurrence disqualifies the name,
    whatever node holds it: an assignment, augmented, annotated or walrus target, a for, with or
    comprehension target, a parameter (lambdas too), an import (each part of a dotted name),
    def / class, except-as, global / nonlocal, del, a match capture or rest; and, more than
    needed, an attribute or keyword name. A star import disqualifies every name (RestrictedPython
    and admission refuse it anyway). Run on the tree before the transform: it adds only names
    beginning with '_', which candidate code cannot bind."""
    other: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) or (
            isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
        ):
            continue
        for _, value in ast.iter_fields(node):
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str):
                    other.add(v)
                    other.update(v.split("."))
    if "*" in other:
        return frozenset()
    return frozenset(names - other)


def compile_candidate(source: str, filename: str) -> tuple[Any, list[str]]:
    with _deep_recursion():
        return _compile_candidate(source, filename)


def _compile_candidate(source: str, filename: str) -> tuple[Any, list[str]]:
    """Compile with the restricted policy: (code object or None, error messages).

    RestrictedPython's transformer, then our own compile() with dont_inherit: RestrictedPython's
    compile_restricted_exec would pass on its module's `from __future__ import annotations`, which
    turns every annotation of the candidate into a string (and breaks dataclasses)."""
    try:
        tree = ast.parse(source, filename, "exec")
    except SyntaxError as e:
        return None, [f"Line {e.lineno}: SyntaxError: {e.msg}"]
    except (RecursionError, MemoryError):  # the parser's own nesting limit
        return None, [TOO_DEEP]
    errors: list[str] = []
    try:
        policy = CandidatePolicy(errors, [], {})
        policy.unchecked_calls = unshadowed_names(tree, UNCHECKED_BUILTINS)
        policy.visit(tree)
        if errors:
            return None, errors
        ast.fix_missing_locations(tree)
        return compile(tree, filename, "exec", dont_inherit=True), []
    except RecursionError:
        return None, [TOO_DEEP]


# ---- static checks ---------------------------------------------------------------------------


def _line_of(source: str, lineno: int | None) -> str:
    if not lineno:
        return ""
    lines = source.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def _forbidden(source: str, node: ast.AST | None, message: str) -> Verdict:
    lineno = getattr(node, "lineno", None)
    text = _line_of(source, lineno)
    tb = f"line {lineno}: {text}" if lineno else None
    return Verdict("forbidden", message, tb, {"line": lineno})


def _check_imports(source: str, tree: ast.AST) -> tuple[Verdict | None, list[str]]:
    """Every import names an allowed module (and, for `from`, allowed attributes of it)."""
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_IMPORTS:
                    hint = " (import scipy.stats or scipy.special)" if alias.name == "scipy" else ""
                    return _forbidden(source, node, f"import of {alias.name!r} is not allowed"
                                      f"{hint}; allowed: {', '.join(sorted(ALLOWED_IMPORTS))}"), []
                modules.append(alias.name)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                return _forbidden(source, node, "relative imports are not allowed"), []
            names = [a.name for a in node.names]
            if mod == "scipy":
                bad = [n for n in names if n not in SCIPY_READABLE]
                if bad:
                    return _forbidden(source, node, f"scipy.{bad[0]} is not allowed "
                                      "(only scipy.stats and scipy.special)"), []
                modules.extend(f"scipy.{n}" for n in names)
                continue
            if mod not in ALLOWED_IMPORTS:
                return _forbidden(source, node, f"import from {mod!r} is not allowed; allowed: "
                                  f"{', '.join(sorted(ALLOWED_IMPORTS))}"), []
            denied = DENIED_MODULE_ATTRS.get(mod, frozenset()) | DENIED_ATTRS
            for n in names:
                if n == "*":
                    return _forbidden(source, node, f"'from {mod} import *' is not allowed"), []
                if n in denied:
                    return _forbidden(source, node, f"{mod}.{n} is not available in the sandbox"), []
                if f"{mod}.{n}" in ALLOWED_IMPORTS:
                    modules.append(f"{mod}.{n}")
            modules.append(mod)
    return None, modules


def _check_names(source: str, tree: ast.AST, aliases: dict[str, str]) -> Verdict | None:
    """Forbidden builtins, computed attribute names, and denied attributes of imported modules."""
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in FORBIDDEN_NAMES:
                return _forbidden(source, node, f"{node.id}: {FORBIDDEN_NAMES[node.id]}")
            if node.id in _ATTR_BUILTINS and id(node) not in called:
                return _forbidden(source, node, f"{node.id} may only be called directly")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _ATTR_BUILTINS:
                args = node.args
                if (len(args) < 2 or not isinstance(args[1], ast.Constant)
                        or not isinstance(args[1].value, str)):
                    return _forbidden(source, node, f"{node.func.id}() needs the attribute name "
                                      "as a string literal (computed names are not allowed)")
                name = args[1].value
                if name.startswith("_") or name in DENIED_ATTRS:
                    return _forbidden(source, node, f"attribute {name!r} is not accessible")
                if node.keywords or any(isinstance(a, ast.Starred) for a in args):
                    return _forbidden(source, node, f"{node.func.id}() with */** arguments")
        elif isinstance(node, ast.Attribute):
            mod = aliases.get(node.value.id) if isinstance(node.value, ast.Name) else None
            if mod is not None:
                denied = DENIED_MODULE_ATTRS.get(mod, frozenset())
                if node.attr in denied or (mod == "scipy" and node.attr not in SCIPY_READABLE):
                    return _forbidden(source, node,
                                      f"{mod}.{node.attr} is not available in the sandbox")
            if node.attr in DENIED_ATTRS:
                return _forbidden(source, node, f"attribute {node.attr!r} is not accessible")
        elif isinstance(node, ast.ClassDef) and node.keywords:
            return _forbidden(source, node, "class keywords (metaclass=...) are not allowed")
    return None


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Names bound to modules by imports: {'np': 'numpy', 'stats': 'scipy.stats', ...}."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in ALLOWED_MODULE_VALUES:
                    out[a.asname or a.name] = full
    return out


def _class_defs(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _check_interface(source: str, tree: ast.Module) -> Verdict | None:
    """Exactly one top-level class with NAME (a string), @staticmethod schedule(beta) and
    run(self, ep); run and schedule may come from a base class of the same file."""
    classes = _class_defs(tree)

    def has(cls: ast.ClassDef, name: str, seen: frozenset[str] = frozenset()) -> ast.AST | None:
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and item.name == name:
                return item
            if isinstance(item, ast.Assign | ast.AnnAssign):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    return item
        for b in cls.bases:
            if isinstance(b, ast.Name) and b.id in classes and b.id not in seen:
                found = has(classes[b.id], name, seen | {cls.name})
                if found is not None:
                    return found
        return None

    controllers = [c for c in classes.values() if has(c, "run") and has(c, "schedule")]
    if len(controllers) != 1:
        names = ", ".join(c.name for c in controllers) or "none"
        return Verdict("interface", "expected exactly one controller class with NAME, "
                       f"schedule and run, found {len(controllers)} ({names})")
    cls = controllers[0]
    ctx = {"line": cls.lineno}
    name = has(cls, "NAME")
    if not (isinstance(name, ast.Assign | ast.AnnAssign) and isinstance(name.value, ast.Constant)
            and isinstance(name.value.value, str) and name.value.value):
        return Verdict("interface", f"{cls.name}.NAME must be a non-empty string literal",
                       context=ctx)
    sched = has(cls, "schedule")
    if not isinstance(sched, ast.FunctionDef) or not any(
        isinstance(d, ast.Name) and d.id == "staticmethod" for d in sched.decorator_list
    ):
        return Verdict("interface", f"{cls.name}.schedule must be a @staticmethod "
                       "schedule(beta) -> dict", context=ctx)
    if len(sched.args.args) + len(sched.args.posonlyargs) < 1 and sched.args.vararg is None:
        return Verdict("interface", f"{cls.name}.schedule must take beta", context=ctx)
    run = has(cls, "run")
    if not isinstance(run, ast.FunctionDef):
        return Verdict("interface", f"{cls.name}.run must be a method run(self, ep)", context=ctx)
    if len(run.args.args) + len(run.args.posonlyargs) < 2 and run.args.vararg is None:
        return Verdict("interface", f"{cls.name}.run must take (self, ep)", context=ctx)
    return None


def imported_modules(source: str) -> list[str]:
    """The allowed modules a candidate imports (the sandbox child loads them before lock-down)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    _, mods = _check_imports(source, tree)
    return sorted(set(mods))


def admit(source: str, filename: str = "<candidate>") -> Verdict | None:
    """Static admission of a controller's source. None means admitted; otherwise the Verdict
    (syntax, forbidden or interface) says why not. Never raises on any source text."""
    try:
        with _deep_recursion():
            return _admit(source, filename)
    except (RecursionError, MemoryError):  # nesting past what even the raised limit allows
        return Verdict("forbidden", TOO_DEEP)


def _admit(source: str, filename: str) -> Verdict | None:
    if not isinstance(source, str):
        return Verdict("syntax", "source must be text")
    if len(source.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        return Verdict("forbidden", f"source is larger than {MAX_SOURCE_BYTES} bytes")
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        text = (e.text or "").rstrip("\n")
        tb = f"line {e.lineno}: {text.strip()}" if e.lineno else None
        return Verdict("syntax", f"line {e.lineno}: {e.msg}", tb, {"line": e.lineno})
    except ValueError as e:  # e.g. null bytes
        return Verdict("syntax", str(e))
    verdict, _ = _check_imports(source, tree)
    if verdict is not None:
        return verdict
    verdict = _check_names(source, tree, _module_aliases(tree))
    if verdict is not None:
        return verdict
    _, errors = compile_candidate(source, filename)
    if errors:
        first = errors[0]
        lineno = None
        if first.startswith("Line "):
            try:
                lineno = int(first[5:].split(":", 1)[0])
            except ValueError:
                lineno = None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        tb = f"line {lineno}: {_line_of(source, lineno)}" if lineno else None
        return Verdict("forbidden", first + more, tb, {"line": lineno})
    return _check_interface(source, tree)
