"""Canonical string form of a math answer.

Two answers written the same way up to presentation get the same string, so they merge without any
sympy work. The rewriting is purely textual, bounded (linear passes over at most
``MAX_ANSWER_CHARS`` characters) and idempotent: ``canonical_math(canonical_math(s)) ==
canonical_math(s)``. Mathematical equivalence of different strings is decided elsewhere.
"""

from __future__ import annotations

import re

from verl_restrain.answers.boxes import MAX_BOX_CHARS, last_boxed

MAX_ANSWER_CHARS = MAX_BOX_CHARS
"""Canonical answers are at most this long; anything longer is not an answer."""
MAX_PASSES = 4

_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202f\u2060\ufeff]")
_UNICODE_MATH = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",
    "\u00d7": "\\times ",
    "\u22c5": "\\cdot ",
    "\u00b7": "\\cdot ",
    "\u00f7": "\\div ",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u221a": "\\sqrt",
    "\u00b0": "^\\circ",
    "\uff0c": ",",
    "\u00a0": " ",
}
_UNICODE_TABLE = str.maketrans(_UNICODE_MATH)

_DELIMITERS = re.compile(r"\\\$|\$|\\\(|\\\)|\\\[|\\\]")
_LAYOUT = re.compile(
    r"\\(?:(?:displaystyle|textstyle|scriptstyle|middle|quad|qquad|[bB]igg?[lr]?)(?![a-zA-Z])"
    r"|(?:left|right)(?![a-zA-Z])\.?|[,;:>]|\s)|~"
)
# A negative thin space takes no room: "10,\!080" is MATH's way of writing 10080.
_NEGATIVE_SPACE = re.compile(r"\\!")
_SEPARATED_THOUSANDS = re.compile(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_DEGREES = re.compile(r"\^\s*(?:\{\s*)?\\circ\s*\}?|\\circ|\\degree(?![a-zA-Z])")
# "28\%", "28 percent", "28 pct" all say 28 percent.
_PERCENT = re.compile(r"\\?%|(?<![a-zA-Z])(?:percent(?:age)?|pct)(?![a-zA-Z])")
# As in Math-Verify (which reads \mathrm, \mathit, \mathbf, \textrm, ... as \text): a unit is words
# in a text command at the end. But \mathrm{i} and \mathrm{e} are the imaginary unit and Euler's
# number, not units of measure.
_TRAILING_UNIT = re.compile(
    r"\\(?:text(?:normal|rm|bf|it)?|math(?:rm|it|bf)|mbox)\s*\{(?!\s*[eij]\s*\})\s*[a-zA-Z][^{}]*\}"
    r"(?:\s*\^\s*\{?\d\}?)?\s*$"
)
# Unit words written bare after a number ("5 cm", from a sentence answer): the words of several
# letters from Math-Verify's unit list that name units of measure, plural "s"/"es" allowed. Its
# one-letter units ("m", "s", "t") are left out: bare, they are as often variables.
_BARE_UNITS = (
    "feet|foot|ft|inch|inches|yard|mile|mph|kmph|kmh|km|cm|mm|dm|metre|meter|mtr|acre|hectare|"
    "kg|gm|lb|pound|gallon|gal|liter|litre|cc|sq|cu|ohm|sec|second|min|minute|hr|hour|day|month|"
    "yr|year|degree|deg|cent|rupee|rs|unit"
)
_TRAILING_BARE_UNIT = re.compile(rf"(?<=[\d}}])\s*(?:{_BARE_UNITS})(?:e?s)?\s*$")
_TEXT_CONJUNCTION = re.compile(r"\\(?:text|mbox|mathrm)\s*\{\s*(and|or)\s*\}")
_CONJUNCTION = re.compile(r"(?<![\\\w])(?:and|or)(?!\w)")
_TEXT_COMMANDS = re.compile(
    r"\\(?:text(?:bf|it|rm|normal|sf|tt)?|math(?:rm|bf|it|sf|tt)|mbox|boldsymbol|bm|operatorname)\s*\{"
)
_THOUSANDS_COMMA = re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
# "0,111" is not a thousands group: Math-Verify reads a decimal comma, 0.111.
_DECIMAL_COMMA = re.compile(r"[+-]?0,\d{3}")
_THOUSANDS_SPACE = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_CONTROL_WORD_END = re.compile(r"\\[a-zA-Z]+$")
_SPACES = re.compile(r"\s+")
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|xi|"
    "rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|Psi|Omega"
)
# A single-symbol left-hand side ("x=", "k_1=", "\theta="): the variable name is not part of the
# answer, since every response of a group answers the same question.
_ASSIGNED_SYMBOL = re.compile(
    rf"(?:[A-Za-z]|\\(?:{_GREEK}))(?![a-zA-Z])(?:_(?:\{{[A-Za-z0-9]+\}}|[A-Za-z0-9]))?'?="
)
_RELATION = re.compile(r"\\(?:le|ge|leq|geq|ne|neq|lt|gt|approx|in|sim)(?![a-zA-Z])|[<>]")


def _matching_brace(text: str, open_pos: int) -> int:
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _unwrap_text_commands(text: str) -> str:
    """``\\text{Evelyn}`` -> ``Evelyn``, ``\\mathbf{5}`` -> ``5`` (brace matched, nested ok)."""
    out = []
    pos = 0
    for _ in range(64):
        match = _TEXT_COMMANDS.search(text, pos)
        if match is None:
            break
        close = _matching_brace(text, match.end() - 1)
        if close < 0:
            break
        out.append(text[pos : match.start()])
        out.append(text[match.end() : close])
        pos = close + 1
    out.append(text[pos:])
    return "".join(out)


def _braced_shorthand(text: str, command: str, arity: int) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``: single-character arguments."""
    pieces = text.split(command)
    out = [pieces[0]]
    for piece in pieces[1:]:
        out.append(command)
        if piece[:1].isalpha():  # a longer command such as \fracture, or \sqrt x (a variable)
            if command == "\\sqrt" and len(piece) == 1:
                out.append("{" + piece + "}")
            else:
                out.append(piece)
            continue
        rest = piece.lstrip(" ")
        if command == "\\sqrt" and rest.startswith("["):
            out.append(piece)
            continue
        for _ in range(arity):
            if rest[:1] == "{":
                close = _matching_brace(rest, 0)
                if close < 0:
                    break
                out.append(rest[: close + 1])
                rest = rest[close + 1 :].lstrip(" ")
            elif rest[:1].isalnum():
                out.append("{" + rest[0] + "}")
                rest = rest[1:].lstrip(" ") if arity > 1 else rest[1:]
            else:
                break
        out.append(rest)
    return "".join(out)


def _squeeze_spaces(text: str) -> str:
    """Drop spaces, except between two digits ("2 3" is not "23") and after a control word
    followed by a letter (``\\pi r`` is not ``\\pir``)."""

    def keep(match: re.Match) -> str:
        before = text[max(0, match.start() - 32) : match.start()]
        after = text[match.end() : match.end() + 1]
        if before[-1:].isdigit() and after.isdigit():
            return " "
        if after.isalpha() and _CONTROL_WORD_END.search(before):
            return " "
        return ""

    return _SPACES.sub(keep, text).strip()


def _strip_outer_braces(text: str) -> str:
    while text.startswith("{") and _matching_brace(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _drop_assignment(text: str) -> str:
    """``x=3`` -> ``3`` and ``x=2+1=3`` -> ``3`` (Math-Verify keeps the last right-hand side).

    Only for a single symbol on the left and no list or inequality, so ``x=1, y=2``, ``a+b=5``
    and ``x\\le 3`` stay as written.
    """
    if "=" not in text or "," in text or ";" in text or "==" in text or _RELATION.search(text):
        return text
    if not _ASSIGNED_SYMBOL.match(text):
        return text
    rhs = text.rsplit("=", 1)[1].strip()
    return rhs or text


def _conjunctions_as_commas(text: str) -> str:
    """"1 and 2", "1, or 2" -> "1, 2": each standalone "and"/"or" with the spaces and the one comma
    around it becomes ", " (a scan, so linear also on long runs of spaces)."""
    pieces = _CONJUNCTION.split(text)
    out = [pieces[0]]
    for piece in pieces[1:]:
        out[-1] = out[-1].rstrip()
        if out[-1].endswith(","):
            out[-1] = out[-1][:-1].rstrip()
        out.append(", " + piece.lstrip())
    return "".join(out)


def _tidy(text: str) -> str:
    text = text.strip().rstrip(".,;:").strip()
    text = _strip_outer_braces(text)
    if text.startswith("+") and text[1:2].isdigit():
        text = text[1:]
    return _drop_assignment(text)


def _rewrite(text: str) -> str:
    """One pass of the rewrites listed in ``canonical_math``."""
    text = _DELIMITERS.sub("", text)
    if "\\!" in text:
        text = _NEGATIVE_SPACE.sub("", _SEPARATED_THOUSANDS.sub("", text))
    text = _LAYOUT.sub(" ", text)
    text = _FRAC_VARIANTS.sub(r"\\frac", text)
    text = _braced_shorthand(text, "\\frac", 2)
    text = _braced_shorthand(text, "\\sqrt", 1)
    text = _DEGREES.sub("", text)
    text = _PERCENT.sub("", text)
    without_unit = _TRAILING_BARE_UNIT.sub("", _TRAILING_UNIT.sub("", text)).strip()
    if without_unit:
        text = without_unit
    if "\\" in text:
        text = _TEXT_CONJUNCTION.sub(r" \1 ", text)
        text = _unwrap_text_commands(text)
    text = _conjunctions_as_commas(text)
    text = text.replace("{,}", "").strip()
    if _THOUSANDS_COMMA.fullmatch(text):
        text = text.replace(",", "")
    elif _DECIMAL_COMMA.fullmatch(text):
        text = text.replace(",", ".")
    elif _THOUSANDS_SPACE.fullmatch(text):
        text = text.replace(" ", "")
    text = _squeeze_spaces(text).replace(",", ", ")
    for _ in range(4):
        tidied = _tidy(text)
        if tidied == text:
            break
        text = tidied
    return text


def canonical_math(answer: str) -> str | None:
    """Canonical form of a bare math answer (box content, gold label, sentence answer).

    Rewrites, in order:
    - invisible/control characters dropped; unicode math (−, ×, ·, π, ∞, √, °) spelled in LaTeX;
    - a ``\\boxed{}`` inside is replaced by its content (gold labels are sometimes stored boxed);
    - ``$``, ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\$`` removed; a comma, ``\\!`` and three
      digits is a thousands separator wherever it stands (MATH's ``10,\\!080``,
      ``\\frac{9}{1,\\!024}``); layout commands removed (``\\left``, ``\\right``,
      ``\\displaystyle``, ``\\,``, ``\\;``, ``\\quad``, ``~``; ``\\!`` without leaving a space);
    - ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``; ``\\frac12`` -> ``\\frac{1}{2}``,
      ``\\sqrt2`` -> ``\\sqrt{2}``;
    - degrees (``^\\circ``, ``°``) and percent signs and words ("percent", "percentage", "pct")
      dropped: "50\\%" and "50 percent" are "50", not "0.5";
    - a unit at the end after something else is dropped, as Math-Verify drops it: words in a text
      command (``5\\text{ cm}``, ``5\\,\\mathrm{cm}``, ``5\\mathrm{~cm}``, ``5\\mbox{ m}^2`` -> 5), or a
      unit word of several letters right after a number or brace ("5 cm", "5km" -> 5);
      other ``\\text{}``/``\\mathrm{}``/``\\mathbf{}`` wrappers are unwrapped;
      "and"/"or" between items become commas;
    - a bare number with thousands separators loses them ("1,000" and "1{,}000" -> "1000"), but
      only when the whole answer is that number: "(1,2)" and "1, 000" are lists; a comma after a
      lone zero is a decimal comma, as Math-Verify reads it ("0,375" -> "0.375");
    - spaces dropped (kept between two digits and after a control word before a letter), list
      commas written ", ";
    - trailing ``.,;:``, enclosing braces, a leading "+" and a single-symbol assignment
      ("x=3" -> "3") removed.
    Returns None when nothing is left or the answer exceeds ``MAX_ANSWER_CHARS``.
    """
    text = _INVISIBLE.sub("", answer).translate(_UNICODE_TABLE)
    if "\\boxed" in text or "\\fbox" in text:
        text = last_boxed(text) or text
    if len(text) > MAX_ANSWER_CHARS:
        return None
    # One rewrite can expose another (unwrapping \text{} next to \frac1): repeat to a fixed point.
    for _ in range(MAX_PASSES):
        rewritten = _rewrite(text)
        if rewritten == text:
            break
        text = rewritten
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    return text
