"""Red team, session 13: the guards' two shortcuts (docs/sandbox.md, "Cheaper guards").

- The value check's fast path: a value whose type is in guards._PLAIN_TYPES skips the identity
  check (`type(v) is ModuleType or id(v) in _DENIED_IDS`). Attacked below: every denied object
  is put where each guard meets it (an attribute, an item, an iteration, a call's result), in
  process and from sandboxed candidates (np.void through a dtype, a dict item and an iteration;
  `type` as a call's result); and a metaclass whose __eq__ / __hash__ would make a set lookup
  lie about a type.
- Calls of an unshadowed builtin (admission.UNCHECKED_BUILTINS) by its name are not wrapped in
  `_checked_`. Attacked below: `len` bound to typing.get_origin (which returns `type`, the
  class factory) in every binding form that can hold it, each a sandboxed candidate that calls
  it and then uses the class factory; every other binding form, checked to keep the calls
  checked; the builtins' return types under hostile dunders; and the ways to change what a
  name means at run time without a binding in the source (__builtins__, globals(), vars(),
  function and frame namespaces).

Each attack was checked to succeed with the safety condition broken on purpose (the mutations
are named in each test's docstring).
"""

from __future__ import annotations

import ast
import builtins
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autotts.evaluate import EvalProtocol
from autotts.sandbox import SandboxError, evaluate_sandboxed, guards
from autotts.sandbox.admission import (
    UNCHECKED_BUILTINS,
    CandidatePolicy,
    admit,
    compile_candidate,
    unshadowed_names,
)
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)

# ---- the value check's fast path ------------------------------------------------------------


def _denied_objects() -> list[object]:
    guards.deny_objects()
    return list(guards._DENIED_KEEP)


_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("check", [
    "no_denied_object_and_no_module_has_a_plain_type",
    "every_denied_object_is_denied_by_every_guard",
    "plain_values_pass_every_guard_unchanged",
    "the_types_of_denied_objects_and_modules_are_never_plain",
])
def test_the_fast_path_decides_as_the_full_check(check):
    """In a fresh interpreter with the child's modules (tests/guard_fastpath_checks.py): no
    denied object or module has a type of _PLAIN_TYPES; every denied object (and a module off
    the allow-list) met by each guard, twice, is denied (numpy.ndarray comes back as the
    sandbox's stand-in); plain values pass unchanged. Mutations that make these fail: `type`,
    `dict` or `builtin_function_or_method` added to _PLAIN_TYPES after the subtraction; the
    subtraction of denied types or of module types left out of _plain_types()."""
    out = subprocess.run([sys.executable, "-m", "tests.guard_fastpath_checks", check],
                         capture_output=True, text=True, cwd=_ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


_LYING_METACLASS = r"""
import sys
from autotts.sandbox import guards

class Liar(type):  # says it is int: equal to everything, int's hash
    def __eq__(cls, other):
        return True
    def __hash__(cls):
        return hash(int)

class Fake(metaclass=Liar):
    pass

assert Fake in frozenset({int})  # why it matters: a set lookup would call Fake plain
guards.deny_objects()
print(len(guards._PLAIN_TYPES))
"""


def test_a_metaclass_with_its_own_eq_or_hash_turns_the_fast_path_off():
    """A type's membership in _PLAIN_TYPES is decided with its metaclass's __hash__ / __eq__.
    No metaclass here defines them (so the lookup is by identity); one that did would make a
    type look plain, so deny_objects() then builds no fast path at all. Mutation that makes
    this fail: the metaclass loop in _plain_types() left out."""
    out = subprocess.run([sys.executable, "-c", _LYING_METACLASS], capture_output=True,
                         text=True, check=True, cwd=_ROOT)
    assert out.stdout.strip() == "0"


# ---- the builtins called without a check --------------------------------------------------


def test_the_candidates_unchecked_builtins_are_the_real_ones(monkeypatch):
    """And candidate_builtins() refuses to build a namespace where one is not (mutation that
    makes this fail: its check left out)."""
    b = guards.candidate_builtins()
    for n in UNCHECKED_BUILTINS:
        assert b[n] is getattr(builtins, n), n
    names = [n for n in guards._SAFE_BUILTIN_NAMES if n != "len"]
    monkeypatch.setattr(guards, "_SAFE_BUILTIN_NAMES", names)
    with pytest.raises(RuntimeError, match="len"):
        guards.candidate_builtins()


class _Hostile:
    """Every dunder an unchecked builtin may call returns a module (or a class, a subclass of
    int, ...), and calling the instance returns one too."""

    def __init__(self, ret: object) -> None:
        self.ret = ret

    def _r(self, *args: object, **kw: object) -> object:
        return self.ret

    __len__ = __int__ = __index__ = __float__ = __bool__ = __str__ = __repr__ = _r
    __format__ = __hash__ = __trunc__ = __complex__ = __abs__ = __round__ = _r
    __instancecheck__ = __subclasscheck__ = __call__ = __iter__ = __next__ = _r
    __lt__ = __gt__ = __le__ = __ge__ = __eq__ = __add__ = __radd__ = __getitem__ = _r
    __bytes__ = __fspath__ = __reversed__ = _r


class _IntSub(int):
    pass


class _StrSub(str):
    pass


def test_unchecked_builtins_return_only_instances_of_int_float_or_str():
    """Whatever the arguments' dunders return, each unchecked builtin returns an instance of
    int, float or str (Python converts what they return or refuses it), and no such instance
    can be a denied object. Mutation that makes this fail: abs, min, max, round, next, iter,
    sum, divmod or pow added to UNCHECKED_BUILTINS."""
    denied = _denied_objects()
    assert not any(isinstance(o, int | float | str) for o in denied)
    rets = [os, type, open, np.ndarray, _IntSub(3), _StrSub("x"), 3, 2.5, "s", True, None]
    makers = [lambda r: _Hostile(r), lambda r: _Hostile, lambda r: type("H", (_Hostile,), {})]
    shapes = [lambda a: (a,), lambda a: (a, a), lambda a: (a, int), lambda a: (1, a),
              lambda a: ("{}", a), lambda a: (a, "x"), lambda a: (b"x", a), lambda a: ()]
    import warnings

    for name in sorted(UNCHECKED_BUILTINS):
        f = getattr(builtins, name)
        for ret in rets:
            for make in makers:
                for shape in shapes:
                    try:
                        h = make(ret)
                        if isinstance(h, type):
                            h.ret = ret
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            got = f(*shape(h))
                    except Exception:
                        continue
                    assert isinstance(got, int | float | str), (name, ret, got)


# Every binding form of Python 3.11 (each a statement or an expression that makes `len` a
# local, a global, a class attribute or a match capture), and forms that do not bind but
# mention the name elsewhere.
_BINDINGS = {
    "assign": "len = f",
    "assign_in_function": "def g():\n    len = f",
    "assign_in_class": "class C:\n    len = f",
    "annotated": "len: object = f",
    "annotated_no_value": "len: object",
    "augmented": "len += 1",
    "tuple_target": "a, len = f, f",
    "starred_target": "a, *len = f",
    "list_target": "[a, len] = f",
    "chained": "a = len = f",
    "walrus": "(len := f)",
    "walrus_in_comprehension": "[(len := x) for x in f]",
    "for": "for len in f:\n    pass",
    "async_for": "async def g():\n    async for len in f:\n        pass",
    "for_tuple": "for a, len in f:\n    pass",
    "with": "with f as len:\n    pass",
    "with_tuple": "with f as (a, len):\n    pass",
    "async_with": "async def g():\n    async with f as len:\n        pass",
    "except": "try:\n    pass\nexcept Exception as len:\n    pass",
    "except_star": "try:\n    pass\nexcept* Exception as len:\n    pass",
    "import": "import len",
    "import_as": "import math as len",
    "import_dotted": "import len.x",
    "from_import": "from math import len",
    "from_import_as": "from math import floor as len",
    "def": "def len():\n    pass",
    "async_def": "async def len():\n    pass",
    "class": "class len:\n    pass",
    "parameter": "def g(len):\n    pass",
    "posonly_parameter": "def g(len, /):\n    pass",
    "kwonly_parameter": "def g(*, len):\n    pass",
    "vararg": "def g(*len):\n    pass",
    "kwarg": "def g(**len):\n    pass",
    "lambda_parameter": "lambda len: 0",
    "lambda_vararg": "lambda *len: 0",
    "list_comprehension": "[0 for len in f]",
    "set_comprehension": "{0 for len in f}",
    "dict_comprehension": "{0: 0 for len in f}",
    "generator": "(0 for len in f)",
    "nested_comprehension": "[0 for a in f for len in a]",
    "global": "def g():\n    global len",
    "nonlocal": "def g():\n    a = 0\n    def h():\n        nonlocal len",
    "del": "del len",
    "match_capture": "match f:\n    case len:\n        pass",
    "match_as": "match f:\n    case int() as len:\n        pass",
    "match_star": "match f:\n    case [*len]:\n        pass",
    "match_rest": "match f:\n    case {**len}:\n        pass",
    "match_sequence": "match f:\n    case [1, len]:\n        pass",
    "match_class_keyword": "match f:\n    case C(a=len):\n        pass",
    "match_or": "match f:\n    case [len] | (len, 0):\n        pass",
    "attribute": "f.len = 1",
    "keyword": "g(len=1)",
    "star_import": "from math import *",
}


@pytest.mark.parametrize("form", sorted(_BINDINGS))
def test_a_builtin_bound_in_any_form_keeps_its_calls_checked(form):
    """`len` bound (or named other than read) in each form: not unshadowed, so the transform
    keeps `_checked_` around `len(x)`; a module that only reads it leaves the call bare.
    Mutations that make this fail: unshadowed_names() looking only at ast.Name targets (every
    form whose name is a plain string: imports, def / class, parameters, except-as, global /
    nonlocal, match captures), skipping list-valued fields (global / nonlocal), skipping the
    parts of a dotted import, or ignoring a star import."""
    code = _BINDINGS[form] + "\nlen(x)\n"
    tree = ast.parse(code)
    assert "len" not in unshadowed_names(tree, UNCHECKED_BUILTINS)
    policy = CandidatePolicy([], [], {})
    policy.unchecked_calls = unshadowed_names(tree, UNCHECKED_BUILTINS)
    assert "_checked_(len(x))" in ast.unparse(policy.visit(tree))


def test_a_builtin_only_read_is_called_without_a_check():
    tree = ast.parse("a = len(x) + int(y)\nb = [len(z) for z in a]\nc = abs(len)\n")
    assert {"len", "int"} <= unshadowed_names(tree, UNCHECKED_BUILTINS)
    policy = CandidatePolicy([], [], {})
    policy.unchecked_calls = unshadowed_names(tree, UNCHECKED_BUILTINS)
    text = ast.unparse(policy.visit(tree))
    assert "_checked_(len(" not in text and "_checked_(int(" not in text
    assert "_checked_(abs(len))" in text
    # */** arguments: RestrictedPython makes the call an `_apply_`, which stays checked
    policy = CandidatePolicy([], [], {})
    tree = ast.parse("a = len(*x)\n")
    policy.unchecked_calls = unshadowed_names(tree, UNCHECKED_BUILTINS)
    assert "_checked_(" in ast.unparse(policy.visit(tree))


def test_compile_candidate_leaves_only_unshadowed_builtin_calls_unchecked():
    """The compiled code itself (the path the child runs), with a counting `_checked_`."""
    calls: list[object] = []

    def counting(v: object) -> object:
        calls.append(v)
        return v

    src = "def f(v):\n    a = len(v)\n    b = int(v[0])\n    c = abs(v[0])\n"
    # checked: abs(-2) (2) always; int(-2) (-2) once `int` is bound; len([-2]) never
    for source, expect in [(src, [2]), ("int = int\n" + src, [-2, 2])]:
        code, errors = compile_candidate(source, "c.py")
        assert not errors
        b = guards.candidate_builtins()
        b["_checked_"] = counting
        g = {"__builtins__": b}
        exec(code, g)
        calls.clear()
        g["f"]([-2])
        assert calls == expect, (source, calls)


# ---- sandboxed: the class factory through a shadowed builtin --------------------------------

_TEMPLATE = '''
import typing
{module}

class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {{}}

    def run(self, ep):
{run}
        return ep.read_new()
'''

_USE = 'factory = len(typing.Type[int])\nmade = factory("Made", (), {"x": 1})'

# Each binds `len` to typing.get_origin, then calls len(typing.Type[int]), which returns
# `type`: a class factory that builds classes with any dunders (the code-execution door of an
# earlier red team). Checked: the call's `_checked_` denies it. (Match statements: refused by
# RestrictedPython; with-as, except-as, def / class names, del and nonlocal bind nothing a
# candidate can make get_origin: the static tests above cover them.)
_ATTACKS = {
    "module_assign": ("len = typing.get_origin", _USE),
    "import_as": ("from typing import get_origin as len", _USE),
    "annotated": ("len: object = typing.get_origin", _USE),
    "tuple_target": ("a, len = 0, typing.get_origin", _USE),
    "walrus": ("", "(len := typing.get_origin)\n" + _USE),
    "for_target": ("", "for len in [typing.get_origin]:\n    " + _USE.replace("\n", "\n    ")),
    "global": ("", "global len\nlen = typing.get_origin\n" + _USE),
    "parameter": ("def probe(len):\n    " + _USE.replace("\n", "\n    ") + "\n    return made.x",
                  "probe(typing.get_origin)"),
    "lambda_parameter": ("", '(lambda len: len(typing.Type[int])("Made", (), {}))'
                             "(typing.get_origin)"),
    "comprehension": ("", '[len(typing.Type[int])("Made", (), {}) '
                          "for len in [typing.get_origin]]"),
    "class_body": ("class Box:\n    len = typing.get_origin\n    "
                   + _USE.replace("\n", "\n    "), "pass"),
}


def _sandboxed(source: str, admit_first: bool = True):
    return evaluate_sandboxed(source, [synthetic_store(2)], [0.5], EvalProtocol(draws=1),
                              limits=FAST, filename="attack.py", _admit=admit_first)


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("attack", sorted(_ATTACKS))
def test_a_shadowed_builtin_cannot_hand_out_the_class_factory(attack):
    """Mutation that makes every one of these fail (the candidate runs and scores):
    unshadowed_names() returning `names` as they are (no binding seen)."""
    module, run = _ATTACKS[attack]
    source = _TEMPLATE.format(module=module, run=textwrap.indent(run, " " * 8))
    assert admit(source, "attack.py") is None, admit(source, "attack.py")
    with pytest.raises(SandboxError) as info:
        _sandboxed(source)
    v = info.value.verdict
    assert v.kind == "forbidden" and "type is not available" in v.message, str(v)


_FAST_PATH_ATTACKS = {
    "attribute": 'np.zeros(1, "V8").dtype.type',
    "item": 'np.sctypeDict["void"]',
    "iteration": '[t for t in np.sctypeDict.values() if t is not None]',
    "call": "typing.get_origin(typing.Type[int])",
}


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("attack", sorted(_FAST_PATH_ATTACKS))
def test_a_denied_class_is_denied_on_every_path_in_the_sandbox(attack):
    """np.void (a class numpy's raw-memory doors use) and `type`, reached through an
    attribute of a dtype, a dict item, an iteration and a call. Mutation that makes these
    fail: `type` added to _PLAIN_TYPES."""
    source = _TEMPLATE.format(module="import numpy as np",
                              run=" " * 8 + f"found = {_FAST_PATH_ATTACKS[attack]}")
    with pytest.raises(SandboxError) as info:
        _sandboxed(source)
    assert info.value.verdict.kind == "forbidden", str(info.value.verdict)


# ---- no binding outside the source ----------------------------------------------------------

_REBINDS = {
    "builtins_item": '__builtins__["len"] = typing.get_origin',
    "globals_item": 'globals()["len"] = typing.get_origin',
    "vars_item": 'vars()["len"] = typing.get_origin',
    "function_globals": '(lambda: 0).__globals__["len"] = typing.get_origin',
    "function_builtins": '(lambda: 0).__builtins__["len"] = typing.get_origin',
    "cython_func_globals": 'np.random.default_rng.func_globals["len"] = typing.get_origin',
    "frame_globals": 'def gen():\n    yield 1\ngen().gi_frame.f_globals["len"] = typing.get_origin',
    "setattr_builtins": 'setattr(__builtins__, "len", typing.get_origin)',
    "import_builtins": 'import builtins\nbuiltins.len = typing.get_origin',
    "dunder_import": '__import__("builtins").len = typing.get_origin',
    "exec": 'exec("len = typing.get_origin")',
    "class_dict": 'class K:\n    pass\nK.__dict__["len"] = typing.get_origin',
    "class_namespace": 'class K:\n    pass\nsetattr(K, "len", typing.get_origin)',
}

_REBIND_TEMPLATE = """
import typing
import numpy as np

try:
{rebind}
except Exception:
    pass


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {{}}

    def run(self, ep):
        try:
            factory = len(typing.Type[int])  # the real len refuses it
        except TypeError:
            raise RuntimeError("len is the builtin") from None
        factory("Made", (), {{}})
        return ep.read_new()
"""


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("trick", sorted(_REBINDS))
@pytest.mark.parametrize("admit_first", [True, False], ids=["admitted", "runtime_only"])
def test_a_name_cannot_be_rebound_without_a_binding_in_the_source(trick, admit_first):
    """The premise of the unchecked calls: the module's namespace and its builtins change only
    through bindings in the source. Every other way to rebind `len` (the attempt's failure
    caught) is refused by admission, by RestrictedPython's compile or by a guard (`forbidden`),
    or by Python itself, and then `len` is still the builtin (the candidate raises to say so).
    A rebind that worked would let the candidate run on with the class factory: no verdict."""
    source = _REBIND_TEMPLATE.format(rebind=textwrap.indent(_REBINDS[trick], "    "))
    with pytest.raises(SandboxError) as info:
        _sandboxed(source, admit_first)
    v = info.value.verdict
    assert v.kind == "forbidden" or (v.kind == "exception" and "len is the builtin" in v.message
                                     ), str(v)
