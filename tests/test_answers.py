from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import autotts.answers as answers_mod
from autotts.answers import ANSWER_MODES, NO_ANSWER, AnswerClasses, classify


def _classes(result: AnswerClasses) -> list[int]:
    return result.classes.tolist()


# ----------------------------------------------------------------------------- exact mode


def test_modes_constant():
    assert ANSWER_MODES == ("exact", "math")
    assert NO_ANSWER == -1


def test_exact_strips_whitespace():
    r = classify([" 204", "204 ", "\t204\n", "204"], "204", "exact")
    assert _classes(r) == [0, 0, 0, 0]
    assert r.representatives == ["204"]
    assert r.gold_class == 0


def test_exact_numbers_by_first_appearance():
    r = classify(["b", "a", "b", "c", " a"], "c", "exact")
    assert _classes(r) == [0, 1, 0, 2, 1]
    assert r.representatives == ["b", "a", "c"]
    assert r.gold_class == 2
    assert r.classes.dtype == np.int32


def test_exact_err_and_empty_are_ordinary_answers():
    r = classify(["ERR", "", "7", "ERR", "  "], "ERR", "exact")
    assert _classes(r) == [0, 1, 2, 0, 1]
    assert r.representatives == ["ERR", "", "7"]
    assert r.gold_class == 0


def test_exact_is_string_identity_not_math():
    r = classify(["0.5", "\\frac{1}{2}"], "\\frac{1}{2}", "exact")
    assert _classes(r) == [0, 1]
    assert r.gold_class == 1


def test_exact_absent_gold_gets_fresh_class():
    r = classify(["1", "2", "1"], "3", "exact")
    assert r.gold_class == 2
    assert r.representatives == ["1", "2"]  # gold is not added


def test_empty_answer_list():
    for mode in ANSWER_MODES:
        r = classify([], "5", mode)
        assert r.classes.shape == (0,) and r.classes.dtype == np.int32
        assert r.representatives == [] and r.gold_class == 0


def test_unknown_mode_rejected():
    with pytest.raises(ValueError):
        classify(["1"], "1", "fuzzy")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- math mode


def test_math_merges_equivalent_latex():
    r = classify(["\\frac{9 \\sqrt{23}}{23}", "\\frac{9\\sqrt{23}}{23}"], "1", "math")
    assert _classes(r) == [0, 0]
    assert r.representatives == ["\\frac{9 \\sqrt{23}}{23}"]


def test_math_merges_decimal_and_fraction():
    r = classify(["0.5", "\\frac{1}{2}", "\\dfrac{1}{2}"], "1/2", "math")
    assert _classes(r) == [0, 0, 0]
    assert r.gold_class == 0


def test_math_integer_and_float_forms():
    # math-verify treats 204.0 (and a leading-zero 0204) as the integer 204.
    r = classify(["204", "204.0", "0204", "205"], "204", "math")
    assert _classes(r) == [0, 0, 0, 1]
    assert r.gold_class == 0


def test_math_keeps_different_values_apart():
    r = classify(["3", "4", "3", "\\frac{7}{2}"], "4", "math")
    assert _classes(r) == [0, 1, 0, 2]
    assert r.gold_class == 1


def test_math_no_answer_strings():
    r = classify(["ERR", "", "  ", "12", "ERR"], "12", "math")
    assert _classes(r) == [NO_ANSWER, NO_ANSWER, NO_ANSWER, 0, NO_ANSWER]
    assert r.representatives == ["12"]
    assert r.gold_class == 0


def test_math_classes_numbered_by_first_appearance():
    r = classify(["7", "\\frac{1}{2}", "ERR", "0.5", "7.0", "x+1"], "1", "math")
    assert _classes(r) == [0, 1, NO_ANSWER, 1, 0, 2]
    assert r.representatives == ["7", "\\frac{1}{2}", "x+1"]
    assert r.gold_class == 3


def test_math_unparsable_only_matches_identical_strings():
    bad = "\\frac{"  # not valid LaTeX
    r = classify([bad, "1", f" {bad} "], bad, "math")
    assert _classes(r) == [0, 1, 0]
    assert r.gold_class == 0  # falls back to exact string identity


def test_math_prose_is_not_parsed_into_symbols():
    r = classify(["204 minutes", "The walk takes 204 minutes in total", "204"], "204", "math")
    assert _classes(r) == [0, 1, 0]  # unit stripping merges the first; prose stays apart
    assert r.gold_class == 0


def test_math_gold_absent_gets_fresh_class():
    r = classify(["1", "2"], "\\frac{3}{1}", "math")
    assert r.gold_class == 2
    assert r.representatives == ["1", "2"]


@pytest.mark.parametrize("gold", ["ERR", "", "   ", "\\frac{"])
def test_math_no_answer_or_unparsable_gold_gets_fresh_class(gold):
    r = classify(["ERR", "", "1"], gold, "math")
    assert _classes(r) == [NO_ANSWER, NO_ANSWER, 0]
    assert r.gold_class == 1


def test_math_gold_matched_by_equivalence():
    r = classify(["\\frac{9\\sqrt{23}}{23}", "5"], "\\frac{9 \\sqrt{23}}{23}", "math")
    assert r.gold_class == 0
    r = classify(["4", "0.5"], "\\frac{1}{2}", "math")
    assert r.gold_class == 1


def test_math_is_deterministic():
    answers = ["x^2+1", "1+x^2", "(3, \\frac{\\pi}{2})", "\\text{(C)}", "C", "ERR", "2"] * 3
    a = classify(answers, "C", "math")
    b = classify(list(answers), "C", "math")
    assert _classes(a) == _classes(b)
    assert a.representatives == b.representatives and a.gold_class == b.gold_class


TRICKY = [
    "0.5",
    "\\{1, 2\\}",
    "\\{2, 1\\}",
    "(1, 2)",
    "[1, 2]",
    "x",
    "X",
    "ab",
    "a b",
    "x = 5",
    "5",
    "\\{5\\}",
    "9\\%",
    "9",
    "C(8,4)",
    "C(8, 4)",
    "70",
    "\\infty",
    "\\pi",
    "3.14159265",
    "e",
    "x \\leq 3",
    "2x+2",
    "2(x+1)",
    "\\frac{1}{2}",
    "0.333333",
    "\\frac{1}{3}",
    "\\sqrt{4}",
    "2",
    "\\log_2 8",
    "3",
    "(3, \\frac{\\pi}{2})",
    "\\text{(C)}",
    "1,000",
    "1000",
    "9^{2024}",
    "3^{4048}",
    "243^3 \\mod 1000",
    "907",
]


def test_math_prefilter_never_changes_the_result(monkeypatch):
    fast = classify(TRICKY, "5", "math")
    monkeypatch.setattr(answers_mod, "_compatible", lambda a, b: True)
    slow = classify(TRICKY, "5", "math")
    assert _classes(fast) == _classes(slow)
    assert fast.representatives == slow.representatives
    assert fast.gold_class == slow.gold_class


def test_math_works_in_worker_threads():
    answers = ["\\frac{9 \\sqrt{23}}{23}", "\\frac{9\\sqrt{23}}{23}", "0.5", "\\frac{1}{2}", "ERR"]
    expected = classify(answers, "\\frac{1}{2}", "math")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: classify(answers, "\\frac{1}{2}", "math"), range(4)))
    for r in results:
        assert _classes(r) == _classes(expected) == [0, 0, 1, 1, NO_ANSWER]
        assert r.gold_class == expected.gold_class == 1
