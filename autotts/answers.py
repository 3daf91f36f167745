"""Answer classes: the answer strings of one question mapped to small integer ids.

Controllers only ever see opaque class ids and correctness is "returned class == gold class", so
this module is the one place that decides when two answers are "the same" (DESIGN §3).

Why it is built this way:

* Classes are numbered by first appearance, so the mapping is a pure function of the input order
  and re-importing a file gives bit-identical stores.
* ``exact`` mode is one dict pass (strip + lookup): it must reproduce the published numbers on
  ~120k strings per reference file (measured: ~0.02 s per file). It never imports
  sympy/math-verify, whose import alone costs about a second.
* ``math`` mode. math-verify's ``parse`` (an ANTLR LaTeX parser, ~1-5 ms per string, up to
  0.3 s for prose) and ``verify`` (sympy ``simplify``, ~3 ms per call, seconds for huge numbers)
  are slow; comparing every new string with every class cost 70-650 s for a single AIME
  question. So:
    - strings are grouped exactly first and each distinct string is parsed once (process-wide
      LRU cache: files that share answers such as small integers share the work);
    - plain digit strings skip the parser (it returns exactly ``Integer(int(s))`` for them);
    - three or more words is prose: math-verify would turn it into a product of one-letter
      symbols (``'[value of the product]'`` -> ``v*a*l*u*E*...``), which is slow to parse and
      merges with nonsense, so prose only joins identical strings;
    - structurally identical parses share a class without ``verify`` (which would return True
      through its first, structural-equality step);
    - a prefilter skips only ``verify`` calls that cannot succeed, so the result is the same as
      the exhaustive first-match scan (checked: identical classes on 22 of the 30
      Qwen3-0.6B/aime24 questions; all 4.8k pairs the mod/huge-number rules skip on
      Qwen3-0.6B/aime25 verify False; tests/test_answers.py). Each parsed Expr is evaluated
      at one fixed point (every free symbol gets a value derived from its lower-cased name;
      undefined functions such as ``C(8, 4)`` a fixed stand-in; ``a \\mod b`` computed
      exactly). Every path by which ``verify`` accepts two
      expressions (structural equality, floats equal after rounding to 6 decimals, ``evalf`` of
      the difference == 0, ``simplify(a - b) == 0`` for real symbols) makes their values agree
      to ~1e-6, so only candidates that close are verified. Sets, tuples and intervals are
      keyed by their elements (a scalar acting as a singleton), Symbols by name (``verify``
      compares them by name only), infinite values only meet infinite ones, values beyond
      float range are compared in arbitrary precision, and whatever is left (relations,
      percentages -- ``verify`` says 9% == 9 --, non-evaluable things) is compared with every
      class.
  Measured (classify over all 30 questions, all probes then finals, cold caches, on a shared
  2-vCPU box at load ~10, so wall time was 2-3x the CPU time): Qwen3-0.6B/aime24 ~15 s CPU
  (4.4k distinct strings: ~13 s parse, ~1 s verify); Qwen3-0.6B/aime25 ~24 s CPU (~13 s parse,
  ~9 s verify, nearly all of it six comparisons of power towers such as 4^{2^{2024}} and
  (23!)! hitting the verify timeout); the 1.7B/4B/8B files 1-5 s each, since larger models
  produce far fewer distinct strings. Parsing dominates and is irreducible short of replacing
  math-verify's parser.
* Parsing choices: the boxed content is parsed as a whole (``extraction_mode='first_match'``, no
  fallback) because math-verify's default "any_match" grabs a fragment when the whole fails
  (``'4 \\times 60 + t'`` -> 60, ``'192 - 12√19'`` -> 12). Its unit stripping stays on, as AIME
  probes often read ``'204 minutes'``; the price is that trailing single letters on its unit
  list are stripped too (``'144 - 48s'`` parses as 96).
* ``verify`` is not symmetric or transitive (``'5'`` vs ``'x = 5'``, ``'\\pi'`` vs
  ``'3.14159265'``): a new string joins the first class (lowest id) whose representative accepts
  it as gold, and the gold joins the first class whose representative it accepts as the answer.
* math-verify implements timeouts with ``signal.alarm``, which raises outside the main thread.
  Timeouts are passed only in the main thread (``None`` elsewhere), so ``classify`` works in
  thread pools (with no time limit there) and in worker processes (whose main thread gets the
  limit). Alarms are wall-clock: on an overloaded machine a slow comparison may time out and be
  counted as "different". In the main thread math-verify swaps the SIGALRM handler and cancels
  any alarm the caller had pending.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

AnswerMode = Literal["exact", "math"]
ANSWER_MODES: tuple[AnswerMode, ...] = ("exact", "math")
NO_ANSWER: int = -1

NO_ANSWER_STRINGS = frozenset({"", "ERR"})
_PARSE_TIMEOUT_S = 3
_VERIFY_TIMEOUT_S = 3
# verify() accepts floats that agree after rounding to 6 decimals; anything it accepts is within
# 1e-6 (absolute) of each other, so these tolerances only err on the side of calling verify.
_ABS_TOL = 1e-5
_REL_TOL = 1e-8
# Three or more words: prose, which math-verify parses into products of one-letter symbols.
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


@dataclass(frozen=True, eq=False)
class AnswerClasses:
    """Answer classes of one question.

    ``classes[i]`` is the class of ``answers[i]``; ``representatives[c]`` is the first (stripped)
    input string of class ``c``; ``gold_class`` is the gold answer's class, or
    ``len(representatives)`` when the gold matches no answer.
    """

    classes: np.ndarray
    representatives: list[str]
    gold_class: int


def classify(answers: Sequence[str], gold: str, mode: AnswerMode) -> AnswerClasses:
    """Assign answer classes to ``answers`` (one question) and to ``gold``."""
    if mode == "exact":
        return _classify_exact(answers, gold)
    if mode == "math":
        return _classify_math(answers, gold)
    raise ValueError(f"unknown answer mode {mode!r}; expected one of {ANSWER_MODES}")


class _ClassOf(dict):  # type: ignore[type-arg]
    """string -> class, filled on first sight: the class of its stripped text in `table`, a new
    one (the next id) for a text not seen yet."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table

    def __missing__(self, s: str) -> int:
        table = self.table
        c = self[s] = table.setdefault(s.strip(), len(table))
        return c


def _group_exact(answers: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """(stripped string -> class in first-seen order, each answer's class as int32)."""
    table: dict[str, int] = {}
    # Each distinct string is stripped once, when first seen (a question repeats a few dozen
    # strings 3,000 times and more); a repeat is one dict look-up. Texts get ids in the order they
    # first appear (len() is evaluated before the insert, so a new text gets the next id).
    class_of = _ClassOf(table)
    ids = np.fromiter(map(class_of.__getitem__, answers), dtype=np.int32, count=len(answers))
    return table, ids


def _classify_exact(answers: Sequence[str], gold: str) -> AnswerClasses:
    table, ids = _group_exact(answers)
    return AnswerClasses(ids, list(table), table.get(gold.strip(), len(table)))


# ----------------------------------------------------------------------------- math mode


def _mv() -> Any:
    try:
        import math_verify
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("answer mode 'math' needs math-verify (pip install math-verify)") from e
    return math_verify


def _timeout(seconds: int) -> int | None:
    # signal.alarm only works in the main thread of the main interpreter.
    return seconds if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=1 << 10)
def _symbol_value(name: str) -> Any:
    from sympy import Float

    # Deterministic across processes (unlike hash()); case-folded because verify compares
    # multi-letter symbol names case-insensitively. Values in [0.5, 1.5).
    return Float(0.5 + (zlib.crc32(name.lower().encode()) % 1_000_003) / 1_000_003, 30)


# An element's key: (value at the fixed point or None, names verify may match it by); None = wild.
_Elem = tuple["complex | _Huge | None", frozenset[str]] | None
# An object's key: its elements (a scalar is a one-element collection); None = wild.
_Key = tuple[_Elem, ...] | None
_INF = "\0inf"


class _Huge:
    """|value| >= 1e250 (4^{2^{2024}}, (23!)!) as a sympy Float; only meets other _Huge values."""

    __slots__ = ("mag",)

    def __init__(self, mag: Any) -> None:
        self.mag = mag

    def close(self, other: _Huge) -> bool:
        # Arbitrary-exponent arithmetic: relative difference of the two magnitudes.
        return bool(abs(self.mag - other.mag) <= _REL_TOL * max(self.mag, other.mag))


def _undef_stand_in(e: Any) -> Any:
    from sympy import Add, Rational

    # An undefined function application (C(8, 4), Phi_13(i)) is opaque to verify: it can only
    # equal something containing the same application, so any fixed continuous stand-in works.
    args = [Rational(k + 1, 1000) * a for k, a in enumerate(e.args)]
    return _symbol_value("f:" + type(e).__name__) + Add(*args)


def _mod_stand_in(e: Any) -> Any:
    # latex2sympy leaves 'a \\mod b' unevaluated and evalf cannot evaluate it; compute it exactly
    # when both sides are modest numbers (verify's own simplify does the same).
    a, b = e.args
    if a.is_number and b.is_number and abs(a.evalf(5)) < 1e4000 and abs(b.evalf(5)) < 1e4000:
        return e.func(a.doit(), b.doit())
    return e


def _value(q: Any, subs: dict[Any, Any]) -> complex | _Huge:
    """Numeric value of ``q`` at ``subs``; raises when it does not evaluate to a number."""
    w = q.evalf(20, subs=subs)
    v = complex(w)
    if math.isfinite(v.real) and math.isfinite(v.imag) and abs(v) < 1e250:
        return v
    if w.is_finite and w.is_number:
        return _Huge(abs(w))
    return complex(math.inf)


def _elem_key(p: Any) -> _Elem:
    from sympy import E, Expr, Float, Mod, Mul, Rational, Symbol, UnevaluatedExpr
    from sympy.core.function import AppliedUndef
    from sympy.matrices.expressions import MatrixExpr

    if not isinstance(p, Expr) or isinstance(p, MatrixExpr):
        return None
    if isinstance(p, Symbol):
        # verify compares a Symbol with anything but a relation or a set by name only.
        return (None, frozenset((p.name.lower(),)))
    names: set[str] = set()
    if p.is_Atom and not isinstance(p, Rational | Float):  # pi, E, I, oo, zoo, nan, ...
        names.add(str(p).lower())  # verify's last resort for Symbol vs x is str(sym) == str(x)
    elif isinstance(p, Mul) and all(a == E or isinstance(a, Symbol) for a in p.args):
        names.add("".join(a.name if isinstance(a, Symbol) else "e" for a in p.args).lower())
    try:
        if p.has(UnevaluatedExpr):  # percentages: verify treats 9% == 9
            return None
        q = p
        if q.has(AppliedUndef):
            q = q.replace(lambda e: isinstance(e, AppliedUndef), _undef_stand_in)
        if q.has(Mod):
            q = q.replace(lambda e: isinstance(e, Mod), _mod_stand_in)
        v = _value(q, {s: _symbol_value(getattr(s, "name", str(s))) for s in q.free_symbols})
    except Exception:
        return (None, frozenset(names)) if names else None
    if isinstance(v, complex) and not (math.isfinite(v.real) and math.isfinite(v.imag)):
        # Infinite (or nan) at the point: verify can only accept another such value, or by
        # name a Symbol such as 'oo'.
        names.add(_INF)
        return (None, frozenset(names))
    return (v, frozenset(names))


def _key(p: Any) -> _Key:
    """Prefilter key of a parsed answer, or None when it must be compared with everything."""
    from sympy import FiniteSet, Interval, Tuple

    if isinstance(p, (FiniteSet, Tuple)):
        elems: tuple[Any, ...] = tuple(p.args)
    elif isinstance(p, Interval):
        elems = (p.start, p.end)
    else:
        elems = (p,)
    if not elems:
        return None
    keys = tuple(_elem_key(e) for e in elems)
    return None if all(k is None for k in keys) else keys


def _close(u: complex, v: complex) -> bool:
    return abs(u - v) <= _ABS_TOL + _REL_TOL * max(abs(u), abs(v))


def _elem_compatible(a: _Elem, b: _Elem) -> bool:
    if a is None or b is None:
        return True
    if a[1] and b[1] and not a[1].isdisjoint(b[1]):
        return True
    u, v = a[0], b[0]
    if u is None or v is None:
        return False
    if isinstance(u, _Huge) or isinstance(v, _Huge):
        return isinstance(u, _Huge) and isinstance(v, _Huge) and u.close(v)
    return _close(u, v)


def _compatible(a: _Key, b: _Key) -> bool:
    """False only when verify cannot accept the pair (see the module docstring)."""
    if a is None or b is None:
        return True
    if len(a) == 1 and len(b) == 1:
        return _elem_compatible(a[0], b[0])
    # Sets/tuples/intervals (a scalar acts as a singleton): every verify path that accepts them
    # pairs each element of one side with an equal element of the other.
    return all(any(_elem_compatible(x, y) for y in b) for x in a) and all(
        any(_elem_compatible(x, y) for x in a) for y in b
    )


def _parse_and_key(s: str, timeout: int | None) -> tuple[Any, _Key]:
    if len(_WORD.findall(s)) >= 3:
        return None, None
    if s.isascii() and s.isdigit() and len(s) < 1000:
        from sympy import Integer

        p: Any = Integer(int(s))
    else:
        mv = _mv()
        res = mv.parse(
            "\\boxed{" + s + "}",
            extraction_config=[mv.LatexExtractionConfig(boxed_match_priority=0)],
            extraction_mode="first_match",
            fallback_mode="no_fallback",
            parsing_timeout=timeout,
            raise_on_error=True,
        )
        p = res[0] if res else None
    if p is None or isinstance(p, str):
        return None, None
    if timeout is None:
        return p, _key(p)
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout as with_timeout

    try:
        return p, with_timeout(timeout)(_key)(p)
    except TimeoutException:
        return p, None  # wild: costs more verify calls, never changes the result


@lru_cache(maxsize=1 << 16)
def _parsed(s: str, timeout: int | None) -> tuple[Any, _Key]:
    return _parse_and_key(s, timeout)


def _parse(s: str, timeout: int | None) -> tuple[Any, _Key]:
    """Parse a boxed answer; ``(None, None)`` when math-verify cannot parse it."""
    from math_verify.errors import TimeoutException

    try:
        return _parsed(s, timeout)  # timeouts/errors raise, so they are not cached
    except TimeoutException:
        return None, None
    except Exception:
        return None, None


class _MathGrouper:
    def __init__(self) -> None:
        self.parse_timeout = _timeout(_PARSE_TIMEOUT_S)
        self.verify_timeout = _timeout(_VERIFY_TIMEOUT_S)
        self.verify = _mv().verify
        self.reps: list[str] = []
        self.parsed: list[Any] = []  # per class; None = unparsable, only identical strings join
        self.keys: list[_Key] = []
        self.by_expr: dict[Any, int] = {}

    def match(self, p: Any, key: _Key, as_gold: bool) -> int | None:
        try:
            c = self.by_expr.get(p)
        except TypeError:  # unhashable (mutable matrix)
            c = None
        if c is not None:
            return c
        for c, rep in enumerate(self.parsed):
            if rep is None or not _compatible(key, self.keys[c]):
                continue
            gold, target = (p, rep) if as_gold else (rep, p)
            if self.verify(gold, target, timeout_seconds=self.verify_timeout):
                return c
        return None

    def add(self, s: str) -> int:
        if s in NO_ANSWER_STRINGS:
            return NO_ANSWER
        p, key = _parse(s, self.parse_timeout)
        c = None if p is None else self.match(p, key, as_gold=False)
        if c is None:
            c = len(self.reps)
            self.reps.append(s)
            self.parsed.append(p)
            self.keys.append(key)
        if p is not None:
            with contextlib.suppress(TypeError):  # unhashable (mutable matrix)
                self.by_expr.setdefault(p, c)
        return c


def _classify_math(answers: Sequence[str], gold: str) -> AnswerClasses:
    table, ids = _group_exact(answers)
    grouper = _MathGrouper()
    mapping = np.fromiter((grouper.add(s) for s in table), dtype=np.int32, count=len(table))
    classes = mapping[ids.astype(np.intp)] if len(ids) else np.empty(0, dtype=np.int32)
    fresh = len(grouper.reps)

    g = gold.strip()
    gold_class = fresh
    if g in table and mapping[table[g]] != NO_ANSWER:
        gold_class = int(mapping[table[g]])
    elif g not in NO_ANSWER_STRINGS:
        p, key = _parse(g, grouper.parse_timeout)
        if p is not None:
            c = grouper.match(p, key, as_gold=True)
            if c is not None:
                gold_class = c
    return AnswerClasses(classes, grouper.reps, gold_class)
