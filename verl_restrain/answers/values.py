"""Evaluating canonical answers that are real constants or functions of a few real variables.

A small recursive-descent parser over the LaTeX subset

    expr   := ['-'] term (('+' | '-') term)*
    term   := power (('\\cdot' | '\\times' | '*' | '/' | '\\div') power | power)*   # juxtaposition
    power  := atom ['^' (group | digit | letter)]
    atom   := number | '\\pi' | 'e' | letter | '\\frac' group group | '\\sqrt' ['[' expr ']'] group
            | '(' expr ')' | group
    group  := '{' expr '}'

gives ``Value(exact, approx, is_decimal, variable)``: ``exact`` is a ``fractions.Fraction`` whenever
the value is rational (integers of any size stay exact), ``approx`` the value at
``PRECISION_DIGITS`` significant digits (mpmath, in a private context). Letters in ``VARIABLES``
are real variables; an expression with variables is evaluated at ``SAMPLE_POINTS`` fixed irrational
points (``function_values``).

Anything outside the subset gives None, and so do constructs that Math-Verify reads in its own way:
a digit before ``\\frac`` (``2\\frac{1}{2}`` is the mixed number 5/2 there), juxtaposition after
"/" (``1/2\\pi`` is ``1/(2\\pi)``), a group after a letter (``f(x)`` is a function call) or a
constant group after a number (``2(3)`` is read as 5), a sign right after "^", stacked exponents,
spaces between digits.

Work is bounded before it is done: strings over ``MAX_EXPRESSION_CHARS``, nesting over
``MAX_DEPTH``, exponents over ``MAX_EXPONENT``, exact powers whose result would exceed
``MAX_EXACT_BITS`` give None instead of being computed; and every intermediate value, exact or
approximate, has a magnitude of at most 2**``MAX_MAGNITUDE_BITS`` (and, unless zero, at least its
inverse), so that no later operation on it (rounding to a decimal place, converting to a Fraction)
works on numbers of more than about ``MAX_MAGNITUDE_BITS`` bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import mpmath

MAX_EXPRESSION_CHARS = 300
MAX_DEPTH = 24
MAX_EXPONENT = 10_000
MAX_EXACT_BITS = 20_000
"""Largest numerator or denominator computed exactly (about 6,000 digits): arithmetic on Fractions
needs gcds, which take a third of a second at ten times this size."""
MAX_MAGNITUDE_BITS = MAX_EXACT_BITS
"""Every value lies within 2**±this (or is 0): pi^9999 does, {pi^{9999}}^{9999} does not."""
MAX_ROOT_DEGREE = 64
PRECISION_DIGITS = 50
SAMPLE_POINTS = 2
VARIABLES = "abcdfghjklmnopqrstuvwxyz"
"""Letters read as real variables: lower case except e (Euler's number, a constant here as in
Math-Verify) and i (the imaginary unit); Math-Verify folds the case of some upper-case letters, so
those are left to it."""

# A context of our own: nothing else can change its precision under us, from any thread.
MP = mpmath.MPContext()
MP.dps = PRECISION_DIGITS

# Starts only where a number starts, so that a search over a run of digits stays linear.
_DECIMAL_LITERAL = re.compile(r"(?<![\d.])-?(?:\d+\.\d*|\.\d+)")
_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]]|\s+|.", re.DOTALL)
_COMMANDS = {"\\frac", "\\sqrt", "\\pi", "\\cdot", "\\times", "\\div"}
_PRODUCT_OPS = {"\\cdot", "\\times", "*"}
_DIVISION_OPS = {"/", "\\div"}


class _Unsupported(Exception):
    """The string is outside the evaluated subset, or too large to evaluate safely."""


@dataclass(frozen=True)
class Value:
    exact: Fraction | None
    approx: mpmath.mpf
    is_decimal: bool = False
    variable: bool = False


def _exact(value: Fraction) -> Value:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_EXACT_BITS:
        raise _Unsupported("exact value too large")
    return Value(value, MP.mpf(value.numerator) / value.denominator)


def _approx(value, variable: bool = False) -> Value:
    if not MP.isfinite(value) or MP.im(value) != 0:
        raise _Unsupported("not a finite real number")
    value = MP.mpf(value)
    # mag is the binary exponent of the value (within 1): towers such as {\pi^{9999}}^{9999} stop here.
    if value != 0 and abs(MP.mag(value)) > MAX_MAGNITUDE_BITS:
        raise _Unsupported("magnitude too large or too small")
    return Value(None, value, variable=variable)


def _number(token: str) -> Value:
    if token.startswith("."):
        token = "0" + token
    if token.endswith("."):
        token = token[:-1]
    if len(token) > 400:
        raise _Unsupported("number too long")
    return _exact(Fraction(token))


def _add(a: Value, b: Value, sign: int) -> Value:
    if a.exact is not None and b.exact is not None:
        return _exact(a.exact + sign * b.exact)
    return _approx(a.approx + sign * b.approx, a.variable or b.variable)


def _multiply(a: Value, b: Value) -> Value:
    if a.exact is not None and b.exact is not None:
        return _exact(a.exact * b.exact)
    return _approx(a.approx * b.approx, a.variable or b.variable)


def _divide(a: Value, b: Value) -> Value:
    if b.exact == 0 or b.approx == 0:
        raise _Unsupported("division by zero")
    if a.exact is not None and b.exact is not None:
        return _exact(a.exact / b.exact)
    return _approx(a.approx / b.approx, a.variable or b.variable)


def _exact_root(value: Fraction, degree: int) -> Fraction | None:
    """The rational ``degree``-th root of a non-negative rational, if there is one."""
    roots = []
    for part in (value.numerator, value.denominator):
        root = round(part ** (1.0 / degree)) if part.bit_length() < 1000 else None
        if root is None:
            return None
        candidates = [r for r in (root - 1, root, root + 1) if r >= 0 and r**degree == part]
        if not candidates:
            return None
        roots.append(candidates[0])
    return Fraction(roots[0], roots[1])


def _root(radicand: Value, degree: Value) -> Value:
    if degree.exact is None or degree.exact.denominator != 1 or not 2 <= degree.exact <= MAX_ROOT_DEGREE:
        raise _Unsupported("root degree")
    n = int(degree.exact)
    if radicand.approx < 0:
        # Odd roots of negatives are complex principal roots in sympy; leave them to Math-Verify.
        raise _Unsupported("root of a negative number")
    if radicand.exact is not None:
        root = _exact_root(radicand.exact, n)
        if root is not None:
            return _exact(root)
    return _approx(MP.root(radicand.approx, n), radicand.variable)


def _power(base: Value, exponent: Value) -> Value:
    variable = base.variable or exponent.variable
    if exponent.exact is not None and exponent.exact.denominator == 1:
        e = int(exponent.exact)
        if abs(e) > MAX_EXPONENT:
            raise _Unsupported("exponent too large")
        if base.exact is not None:
            if base.exact == 0 and e <= 0:
                raise _Unsupported("0 to a non-positive power")
            bits = max(base.exact.numerator.bit_length(), base.exact.denominator.bit_length())
            if bits * abs(e) > MAX_EXACT_BITS:
                raise _Unsupported("exact power too large")
            return _exact(base.exact**e)
        if base.approx == 0 and e <= 0:
            raise _Unsupported("0 to a non-positive power")
        return _approx(MP.power(base.approx, e), variable)
    if base.approx <= 0 or abs(exponent.approx) > MAX_EXPONENT:
        raise _Unsupported("non-integer power of a non-positive number")
    if exponent.exact is not None and base.exact is not None and exponent.exact.denominator <= MAX_ROOT_DEGREE:
        root = _exact_root(base.exact, exponent.exact.denominator)
        if root is not None:
            return _power(_exact(root), _exact(Fraction(exponent.exact.numerator)))
    return _approx(MP.power(base.approx, exponent.approx), variable)


class _Parser:
    """Recursive-descent evaluator; with ``point`` (letter -> value) it evaluates a function of
    single-letter variables there and records whether it is a rational function."""

    def __init__(self, text: str, point: dict[str, mpmath.mpf] | None = None):
        tokens = _TOKEN.findall(text)
        self.point = point
        self.tokens = []
        for i, token in enumerate(tokens):
            if token.isspace():
                # Canonical strings keep a space between a command and a letter (\pi r), which is
                # a product, and between two digits ("2 3"), which Math-Verify reads its own way.
                if 0 < i < len(tokens) - 1 and tokens[i - 1].startswith("\\") and tokens[i + 1].isalpha():
                    continue
                raise _Unsupported("space")
            if token.startswith("\\") and token not in _COMMANDS:
                raise _Unsupported(token)
            if len(token) == 1 and not (token.isdigit() or token in "-+*/^(){}[]e" or self.is_variable(token)):
                raise _Unsupported(token)
            self.tokens.append(token)
        self.pos = 0
        self.depth = 0
        self.variables_seen = 0
        self.rational = True

    def is_variable(self, token: str | None) -> bool:
        return self.point is not None and token is not None and token in self.point

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Unsupported(f"expected {expected}")
        self.pos += 1
        return token

    def parse(self) -> Value:
        value = self.expr()
        if self.peek() is not None:
            raise _Unsupported("trailing tokens")
        return value

    def expr(self) -> Value:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Unsupported("too deep")
        negate = False
        if self.peek() in ("-", "+"):
            negate = self.take() == "-"
        value = self.term()
        if negate:
            value = _multiply(_exact(Fraction(-1)), value)
        while self.peek() in ("+", "-"):
            sign = 1 if self.take() == "+" else -1
            if self.peek() in ("+", "-"):
                raise _Unsupported("double sign")
            value = _add(value, self.term(), sign)
        self.depth -= 1
        return value

    def term(self) -> Value:
        value = self.power()
        divided = False
        while True:
            token = self.peek()
            previous = self.tokens[self.pos - 1]
            if token in _PRODUCT_OPS or token in _DIVISION_OPS:
                self.take()
                if self.peek() in ("+", "-"):
                    raise _Unsupported("sign after operator")
                factor = self.power()
                if token in _DIVISION_OPS:
                    divided = True
                    value = _divide(value, factor)
                else:
                    value = _multiply(value, factor)
            elif token in ("\\pi", "e", "\\sqrt", "\\frac") or self.is_variable(token):
                if divided or (token == "\\frac" and previous[0].isdigit()):
                    raise _Unsupported("ambiguous juxtaposition")
                value = _multiply(value, self.power())
            elif token == "(":
                # Math-Verify multiplies "2(x+1)" and "(x+1)(x-1)" but reads "2(3)" as 5 and
                # "f(x)" as a function call: only a group holding a variable, after a digit or ")".
                if divided or not (previous[0].isdigit() or previous == ")"):
                    raise _Unsupported("juxtaposed group")
                seen = self.variables_seen
                factor = self.power()
                if self.variables_seen == seen:
                    raise _Unsupported("juxtaposed constant group")
                value = _multiply(value, factor)
            elif token == "{":
                raise _Unsupported("juxtaposed group")
            else:
                return value

    def power(self) -> Value:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take("^")
        token = self.peek()
        if token == "{":
            exponent = self.group()
        elif token is not None and len(token) == 1 and (token.isdigit() or token == "e" or self.is_variable(token)):
            exponent = self.atom()
        else:
            raise _Unsupported("exponent")
        if self.peek() == "^":
            raise _Unsupported("stacked exponents")
        integral = exponent.exact is not None and exponent.exact.denominator == 1
        if exponent.variable or (base.variable and not integral):
            self.rational = False
        return _power(base, exponent)

    def group(self, open_: str = "{", close: str = "}") -> Value:
        self.take(open_)
        value = self.expr()
        self.take(close)
        return value

    def atom(self) -> Value:
        token = self.peek()
        if token is None:
            raise _Unsupported("missing operand")
        if token[0].isdigit() or token[0] == ".":
            self.take()
            if self.peek() is not None and (self.peek()[0].isdigit() or self.peek() == "."):
                raise _Unsupported("malformed number")
            return _number(token)
        if self.is_variable(token):
            self.take()
            self.variables_seen += 1
            return Value(None, self.point[token], variable=True)
        if token == "\\pi":
            self.take()
            return _approx(MP.pi)
        if token == "e":  # Math-Verify reads a lone e as Euler's number
            self.take()
            return _approx(MP.e)
        if token == "\\frac":
            self.take()
            numerator = self.group()
            return _divide(numerator, self.group())
        if token == "\\sqrt":
            self.take()
            degree = self.group("[", "]") if self.peek() == "[" else _exact(Fraction(2))
            radicand = self.group()
            if radicand.variable:
                self.rational = False
            return _root(radicand, degree)
        if token == "(":
            return self.group("(", ")")
        if token == "{":
            return self.group()
        raise _Unsupported(token)


_ERRORS = (_Unsupported, ValueError, ZeroDivisionError, OverflowError, ArithmeticError, RecursionError)


@lru_cache(maxsize=65536)
def constant_value(text: str) -> Value | None:
    """Value of a canonical answer that is a real constant, else None (see module docstring)."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        value = _Parser(text).parse()
    except _ERRORS:
        return None
    # Math-Verify rewrites the exact string "0.5" (or ".5") as 1/2 before parsing.
    if _DECIMAL_LITERAL.fullmatch(text) and text not in ("0.5", ".5"):
        return Value(value.exact, value.approx, is_decimal=True)
    return value


def _sample_points() -> tuple[dict[str, mpmath.mpf], ...]:
    """Two points with irrational, unrelated coordinates in [1, 4] for every variable letter."""
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89]
    return tuple(
        {letter: 1 + MP.sqrt(prime * (k + 2)) % 3 for letter, prime in zip(VARIABLES, primes)}
        for k in range(SAMPLE_POINTS)
    )


@lru_cache(maxsize=65536)
def function_values(text: str) -> tuple[tuple[Value, ...], bool] | None:
    """Values of a canonical answer with variables at ``SAMPLE_POINTS`` fixed points, and whether
    it is a rational function of them (no root or non-integer power of a variable, no variable
    exponent). None without variables or outside the evaluated subset."""
    if len(text) > MAX_EXPRESSION_CHARS or not any(letter in text for letter in VARIABLES):
        return None
    values, rational = [], True
    for point in _POINTS:
        try:
            parser = _Parser(text, point)
            values.append(parser.parse())
        except _ERRORS:
            return None
        if parser.variables_seen == 0:
            return None
        rational = rational and parser.rational
    return tuple(values), rational


_POINTS = _sample_points()
