"""Deciding answer equality without sympy: exact constants, sampled polynomials, sets and bounds.

Most answers are real constants (integers, decimals, fractions, radicals, multiples of pi or e),
tuples or sets of those, polynomials or one-variable bounds. For them Math-Verify's verdict can be
computed from their values (``values``), far faster than parsing to sympy and simplifying.

Equality of constants (``numbers_equal``) follows Math-Verify's ``sympy_numeric_eq`` with exact
arithmetic in place of 15-digit floats:
- if either answer is a bare decimal literal (other than "0.5", which Math-Verify reads as 1/2):
  against an integer it must be exactly equal (1.0000004 is not 1, 2.0 is 2); otherwise both are
  rounded to ``FLOAT_ROUNDING`` = 6 decimal places (half to even, like sympy's ``round``) and
  compared: 1/3 equals 0.333333, and so do 0.0000001 and 0.0000002, exactly as in Math-Verify;
- else if both are rational, they are compared exactly: 12345678901234567890 and
  12345678901234567891 differ (a float comparison would merge them);
- else they are equal when they agree to ``EQUAL_TOLERANCE`` relative (Math-Verify's symbolic and
  15-digit checks; ``\\frac{1}{\\sqrt{2}}`` equals ``\\frac{\\sqrt{2}}{2}``), unequal when they
  differ by more than ``DIFFERENT_TOLERANCE``, undecided in between.
``numeric_verdict`` extends this to tuples, sets, functions of variables and bounds.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

import mpmath

from verl_restrain.answers.values import (
    MP,
    MAX_EXPRESSION_CHARS,
    SAMPLE_POINTS,
    VARIABLES,
    Value,
    constant_value,
    function_values,
)

EQUAL_TOLERANCE = mpmath.mpf(10) ** -30
DIFFERENT_TOLERANCE = mpmath.mpf(10) ** -12
FLOAT_ROUNDING = 6


def _split_top_level(text: str) -> list[str] | None:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
            if depth < 0:
                return None
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts if depth == 0 else None


@lru_cache(maxsize=65536)
def tuple_value(text: str) -> tuple[str, str, tuple[Value, ...]] | None:
    """(opening bracket, closing bracket, component values) of ``(a, b)``/``[a, b)``-style answers
    whose components are all constants; None otherwise. Sets (``\\{...\\}``, bare lists) are not
    tuples: their order does not matter and Math-Verify compares them."""
    if len(text) > MAX_EXPRESSION_CHARS or len(text) < 5 or text[0] not in "([" or text[-1] not in ")]":
        return None
    parts = _split_top_level(text[1:-1])
    if parts is None or len(parts) < 2:
        return None
    values = tuple(constant_value(part) for part in parts)
    if any(value is None for value in values):
        return None
    return text[0], text[-1], values


@lru_cache(maxsize=65536)
def rational_set_value(text: str) -> frozenset[Fraction] | None:
    """Elements of a set of rational numbers written ``\\{a, b\\}`` or ``a, b`` (Math-Verify reads
    both as a finite set: order and repeats do not matter); None if an element is not an exact
    rational or is a decimal (decimals compare after rounding, which is not a set operation)."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    braced = text.startswith("\\{") and text.endswith("\\}")
    parts = _split_top_level(text[2:-2] if braced else text)
    if parts is None or len(parts) < (1 if braced else 2):
        return None
    elements = set()
    for part in parts:
        value = constant_value(part)
        if value is None or value.exact is None or value.is_decimal:
            return None
        elements.add(value.exact)
    return frozenset(elements)


_RELATION_OPERATOR = re.compile(r"\\(?:geqslant|leqslant|geq?|leq?|gt|lt)(?![a-zA-Z])|<|>")
_OPERATORS = {"\\ge": ">=", "\\geq": ">=", "\\geqslant": ">=", "\\le": "<=", "\\leq": "<=",
              "\\leqslant": "<=", "\\gt": ">", ">": ">", "\\lt": "<", "<": "<"}
_FLIPPED = {">=": "<=", "<=": ">=", ">": "<", "<": ">"}


@lru_cache(maxsize=65536)
def simple_relation(text: str) -> tuple[str, str, Value] | None:
    """``(variable, operator, bound)`` for ``x \\ge 3``-style answers (one letter against a
    constant, either side; ``3 \\le x`` is ``("x", ">=", 3)``), else None."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    operators = list(_RELATION_OPERATOR.finditer(text))
    if len(operators) != 1 or "=" in text:
        return None
    match = operators[0]
    left, operator, right = text[: match.start()].strip(), _OPERATORS[match.group(0)], text[match.end() :].strip()
    if len(left) == 1 and left in VARIABLES:
        variable, bound = left, constant_value(right)
    elif len(right) == 1 and right in VARIABLES:
        variable, bound, operator = right, constant_value(left), _FLIPPED[operator]
    else:
        return None
    return None if bound is None else (variable, operator, bound)


def _approx_equal(a: mpmath.mpf, b: mpmath.mpf) -> bool | None:
    """True within ``EQUAL_TOLERANCE``, False beyond ``DIFFERENT_TOLERANCE`` (relative to the larger
    magnitude, at least 1), None in between (cancellation may have eaten the digits)."""
    difference = abs(a - b)
    scale = max(abs(a), abs(b), MP.mpf(1))
    if difference <= EQUAL_TOLERANCE * scale:
        return True
    if difference > DIFFERENT_TOLERANCE * scale:
        return False
    return None


def _rounded(value: Value) -> Fraction:
    """The value rounded to ``FLOAT_ROUNDING`` places, exactly. Cheap for every ``Value``: its
    magnitude is within 2**±``values.MAX_MAGNITUDE_BITS``, so the Fraction has at most that many bits."""
    if value.exact is not None:
        exact = value.exact
    else:
        mantissa, exponent = MP.mpf(value.approx).man_exp
        exact = Fraction(mantissa) * (Fraction(2) ** exponent)
    return round(exact, FLOAT_ROUNDING)


def _integer_constant(value: Value) -> bool:
    return not value.is_decimal and value.exact is not None and value.exact.denominator == 1


def numbers_equal(a: Value, b: Value) -> bool | None:
    """Math-Verify's numeric equality of two constants, computed exactly (module docstring)."""
    if a.is_decimal or b.is_decimal:
        if _integer_constant(a) or _integer_constant(b):
            return a.exact == b.exact
        return _rounded(a) == _rounded(b)
    if a.exact is not None and b.exact is not None:
        return a.exact == b.exact
    return _approx_equal(a.approx, b.approx)


def _tuple_verdict(a: tuple[str, str, tuple[Value, ...]], b: tuple[str, str, tuple[Value, ...]]) -> bool | None:
    if a[:2] != b[:2]:
        return None
    if len(a[2]) != len(b[2]):
        return False
    verdicts = [numbers_equal(x, y) for x, y in zip(a[2], b[2])]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def numeric_verdict(a: str, b: str) -> bool | None:
    """Equality of two canonical answers decided without sympy, or None when it cannot be.

    - two constants: ``numbers_equal``;
    - two tuples/intervals of constants with the same brackets: componentwise; a constant and such a
      tuple: unequal;
    - two finite sets of rationals (``\\{1, 2\\}``, ``2, 1``): as sets;
    - two one-variable bounds (``x \\ge 3``, ``3 \\le x``): same variable, same direction and
      strictness, equal bound (Math-Verify compares the solution sets, which for these is the same);
    - expressions in single-letter variables (constants included): unequal if their values differ at
      one of the sample points (an identity holds at every point, so Math-Verify's symbolic check
      would fail too); equal if they agree at all of them and both are rational functions (a
      nonzero rational function vanishes at two generic points only by accident); otherwise None.
    """
    value_a, value_b = constant_value(a), constant_value(b)
    if value_a is not None and value_b is not None:
        return numbers_equal(value_a, value_b)
    tuple_a, tuple_b = tuple_value(a), tuple_value(b)
    if tuple_a is not None and tuple_b is not None:
        return _tuple_verdict(tuple_a, tuple_b)
    if (value_a is not None and tuple_b is not None) or (tuple_a is not None and value_b is not None):
        return False
    set_a, set_b = rational_set_value(a), rational_set_value(b)
    if set_a is not None and set_b is not None:
        return set_a == set_b
    relation_a, relation_b = simple_relation(a), simple_relation(b)
    if relation_a is not None and relation_b is not None:
        if relation_a[:2] != relation_b[:2]:
            return False
        return numbers_equal(relation_a[2], relation_b[2])
    if (len(a) == 1 and a in VARIABLES) or (len(b) == 1 and b in VARIABLES):
        # Math-Verify compares a bare symbol by name only ("x" is not "x+0"): its rule, not ours.
        return None
    function_a = ((value_a,) * SAMPLE_POINTS, True) if value_a is not None else function_values(a)
    function_b = ((value_b,) * SAMPLE_POINTS, True) if value_b is not None else function_values(b)
    if function_a is None or function_b is None:
        return None
    verdicts = [_approx_equal(x.approx, y.approx) for x, y in zip(function_a[0], function_b[0])]
    if False in verdicts:
        return False
    if None in verdicts or not (function_a[1] and function_b[1]):
        return None
    return True
