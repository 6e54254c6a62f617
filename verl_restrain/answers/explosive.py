"""Answers that would make sympy build astronomically large numbers, turned away before any sympy work.

Cheap textual checks on a canonical answer (bounded: a string over ``MAX_SYMPY_CHARS`` is turned
away first, and every pattern is linear). An explosive answer is compared by string only.
"""

from __future__ import annotations

import re

MAX_SYMPY_CHARS = 300
MAX_SYMPY_DEPTH = 20

_POWER_TOWER = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\([^()]*\^")
_HUGE_EXPONENT = re.compile(r"\^[\s{(+-]*\d{6,}")
_LONG_NUMBER = re.compile(r"\d{6,}")
_FACTORIAL_CHAIN = re.compile(r"!\s*!\s*!")
_BINOMIAL = re.compile(r"\\[dt]?binom")
_FACTORIAL = re.compile("!")


def _operand_before(text: str, end: int) -> str:
    """The number or bracketed group that ends right before ``text[end]`` (for factorials)."""
    i = end - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    if i < 0:
        return ""
    if text[i].isdigit():
        start = i
        while start > 0 and text[start - 1].isdigit():
            start -= 1
        return text[start : i + 1]
    closers = {")": "(", "}": "{", "]": "["}
    if text[i] not in closers:
        return text[i]
    depth = 0
    for j in range(i, -1, -1):
        if text[j] in closers:
            depth += 1
        elif text[j] in "({[":
            depth -= 1
            if depth == 0:
                return text[j : i + 1]
    return text[: i + 1]


def looks_explosive(answer: str) -> bool:
    """Whether handing ``answer`` to sympy risks an unbounded computation.

    True for: more than ``MAX_SYMPY_CHARS`` characters; bracket nesting deeper than
    ``MAX_SYMPY_DEPTH``; a power whose exponent contains a power (``9^{9^{9}}``); an exponent of six
    or more digits (after any signs, spaces and opening brackets); a factorial of a six-digit number
    or of a group holding a power, a factorial or a six-digit number; three factorials in a row; a
    binomial with such arguments.
    """
    if len(answer) > MAX_SYMPY_CHARS:
        return True
    depth = deepest = 0
    for char in answer:
        if char in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")}]":
            depth -= 1
    if deepest > MAX_SYMPY_DEPTH:
        return True
    if _POWER_TOWER.search(answer) or _HUGE_EXPONENT.search(answer) or _FACTORIAL_CHAIN.search(answer):
        return True
    for match in _FACTORIAL.finditer(answer):
        operand = _operand_before(answer, match.start())
        if "^" in operand or "!" in operand or _LONG_NUMBER.search(operand):
            return True
    if _BINOMIAL.search(answer) and ("^" in answer or _LONG_NUMBER.search(answer)):
        return True
    return False
