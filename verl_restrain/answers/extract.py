"""Locating the final answer inside a response: boxes, stated answers, option letters.

Plain string scanning with bounded work, whatever the input: boxes are read by ``boxes`` (linear),
and the stated-answer patterns only read the last ``TAIL_CHARS`` characters. Every pattern is linear
in its input. No function here raises on any ``str``.
"""

from __future__ import annotations

import re

from verl_restrain.answers.boxes import boxed_answer, last_boxed

TAIL_CHARS = 2000
"""Stated answers, final lines and option letters are only looked for in this many final characters."""
MAX_SENTENCE_ANSWER_CHARS = 200

OPTION_LETTERS = "ABCDEFGHIJ"
"""Option letters for ``choice``: A-J covers 4-option GPQA/MMLU and 10-option MMLU-Pro."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_SENTENCE = re.compile(
    r"(?:final\s+answer|\banswer)\s*(?:is\b|:|=)\s*:?\s*|final\s+answer[ \t]*\n\s*", re.IGNORECASE
)
# Math-Verify's "final answer ... is X" (up to 100 characters between), which it reads in place of
# an earlier box; with "final answer is X. I hope", in place of any box (the Minerva format).
_FINAL_ANSWER_IS = re.compile(r"(?i:final answer).{0,100}?\sis\b:?\s*", re.DOTALL)
_MINERVA = re.compile(r"(?i:final answer is):?\s*")
_I_HOPE = re.compile(r"\.?\s?I hope")
# What Math-Verify reads after "final answer is": math in delimiters, a number or an expression
# that starts with one, or a fraction.
_MATH_START = re.compile(r"[-+(]{0,3}(?:\\?\$)?[-+]?\.?\d|\\[dtc]?frac")
# The final line of GSM8K-style solutions: "#### 18" (the dataset's own answers), "A: 72".
_FINAL_LINE = re.compile(r"(?:####|A:)[ \t]*")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
# Two plain words in a row ("because the", "is not") mean the sentence went on in prose.
_PROSE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}\s+[a-zA-Z]{2,}")
# A number followed by words ("18 dollars", "4 containers per day"): the number is the answer.
_NUMBER_THEN_WORDS = re.compile(r"(?<![\w.,])((?:\\?\$)?[-+]?\d[\d,]*(?:\.\d+)?)\s+[a-zA-Z]{2}[a-zA-Z ]*")

# A bare letter counts when it stands alone: "Answer: I think it's B" is not option I, nor is
# "The answer is A train ..." option A. Followed by a lower-case word it counts too, except for A and
# I, which are English words: "The answer is B because ..." is option B.
_LETTER_AFTER_ANSWER = re.compile(
    r"(?:(?i:answer)\s*(?:(?i:is)\s*)?(?:[:\-]\s*)?|(?i:final)\s*:\s*)(?:(?i:option|choice)\s*)?"
    r"(?:\(\s*([A-Ja-j])\s*\)|([A-J])(?=[ \t]*(?:$|[\n.,;:!?)\]}]))|([B-HJ])(?=[ \t]+[a-z]))"
)
_LETTER_ALONE = re.compile(r"(?:\(\s*)?([A-J])(?:\s*\))?\.?")
_LETTER_FRAGMENT = re.compile(r"\(\s*([A-Ja-j])\s*\)(?:[\s.:,].*)?|([A-J])(?:[\s.:,)].*)?|([a-j])[.:)]?", re.DOTALL)
_TEXT_WRAPPERS = re.compile(r"\\(?:text(?:bf|it|rm|normal)?|math(?:rm|bf|it|sf)|mbox|bf)\s*\{([^{}]*)\}")
_OPTION_WORD = re.compile(r"^(?:option|choice)\s*", re.IGNORECASE)


def _delimited(text: str) -> tuple[str, int] | None:
    """(math, end) of ``$...$``/``\\(...\\)``/``\\[...\\]`` at the start of ``text``; ``end`` is
    the index after the closing delimiter."""
    for opener, closer in _MATH_DELIMITERS:
        if text.startswith(opener):
            end = text.find(closer, len(opener))
            return (text[len(opener) : end], end + len(closer)) if end > 0 else None
    return None


def _answer_at(text: str) -> tuple[str, int] | None:
    """(answer, end) of the answer that ``text`` starts with, after an answer phrase.

    The answer is the math right at the start (``$...$``, ``\\(...\\)``, ``\\[...\\]``), else
    the text up to the end of the sentence or line, of which a number followed by words ("18
    dollars") keeps the number. Markdown ``**`` is ignored. Prose ("that we need more
    information"), anything longer than ``MAX_SENTENCE_ANSWER_CHARS`` and an unclosed box are not
    answers. ``end`` indexes ``text``.
    """
    start = len(text) - len(text.lstrip().lstrip("*").lstrip())
    rest = text[start:]
    delimited = _delimited(rest)
    if delimited is not None:
        answer, end = delimited
    else:
        sentence_end = _SENTENCE_END.search(rest)
        end = sentence_end.start() if sentence_end else len(rest)
        answer = rest[:end].replace("**", "").strip()
        counted = _NUMBER_THEN_WORDS.fullmatch(answer)
        if counted is not None:
            answer = counted.group(1)
    answer = answer.replace("**", "").strip()
    if not answer or len(answer) > MAX_SENTENCE_ANSWER_CHARS or _PROSE.search(answer):
        return None
    if any(command in answer for command in _BOX_COMMANDS):  # a box that never closed
        return None
    return answer, start + end


def _final_answer_statement(
    text: str, start: int, pattern: re.Pattern = _FINAL_ANSWER_IS
) -> tuple[str, int, int] | None:
    """(X, anchor index, end of X) of the last ``pattern`` ("final answer ... is") in
    ``text[start:]``, if its X is math: delimited, or starting as ``_MATH_START``."""
    last = None
    for last in pattern.finditer(text, start):
        pass
    if last is None:
        return None
    found = _answer_at(text[last.end() :])
    if found is None:
        return None
    rest = text[last.end() :].lstrip().lstrip("*").lstrip()
    if not (rest.startswith(("$", "\\(", "\\[")) or _MATH_START.match(found[0])):
        return None
    return found[0], last.start(), last.end() + found[1]


def _first_final_answer(text: str) -> int | None:
    """Where the first "final answer" (any case) of the final ``TAIL_CHARS`` characters starts,
    or None: a fast test before the statement patterns, which most responses do not need."""
    tail_start = max(0, len(text) - TAIL_CHARS)
    tail = text[tail_start:]
    lowered = tail.lower()
    found = lowered.find("final answer")
    if found < 0:
        return None
    # lower() can lengthen a few characters (İ); then the index is not one of text's.
    return tail_start + found if len(lowered) == len(tail) else tail_start


def final_line_answer(text: str) -> str | None:
    """X of a last line "#### X" or "A: X" (GSM8K's answers, and its few-shot solutions), when X is
    a number or starts like one (``_MATH_START``): "#### Answer: 42" is left to ``answer_sentence``
    and a Markdown heading "#### Step 3" is no answer."""
    stripped = text.rstrip()
    line = stripped[max(stripped.rfind("\n") + 1, len(stripped) - TAIL_CHARS) :].lstrip()
    marker = _FINAL_LINE.match(line)
    found = _answer_at(line[marker.end() :]) if marker else None
    return found[0] if found is not None and _MATH_START.match(found[0]) else None


def answer_sentence(text: str) -> str | None:
    """Answer stated in words: the last "final answer is X", "(the) answer is X", "Answer: X" or a
    "Final Answer" heading followed by X on the next line, in the final ``TAIL_CHARS``
    characters; X as ``_answer_at`` reads it."""
    tail = text[-TAIL_CHARS:].replace("**", "")
    last = None
    for last in _ANSWER_SENTENCE.finditer(tail):
        pass
    found = None if last is None else _answer_at(tail[last.end() :])
    return None if found is None else found[0]


def math_answer(text: str) -> str | None:
    """The raw final answer of a ``math`` response, Math-Verify's priorities first, or None.

    In order: X of a "final answer is X. I hope" (the Minerva format); the last box
    (``boxes.boxed_answer``), unless a "final answer ... is X" follows it, then X; a last line
    "#### X" or "A: X"; an answer sentence (``answer_sentence``). Statements are looked for in the
    final ``TAIL_CHARS`` characters.
    """
    start = _first_final_answer(text)
    minerva = None if start is None else _final_answer_statement(text, start, _MINERVA)
    if minerva is not None and _I_HOPE.match(text, minerva[2]):
        return minerva[0]
    statement = None if start is None else _final_answer_statement(text, start)
    boxed = boxed_answer(text)
    if boxed is not None:
        if statement is not None and statement[1] >= boxed[1]:
            return statement[0]
        return boxed[0]
    return final_line_answer(text) or answer_sentence(text)


def option_letter(fragment: str) -> str | None:
    """Option letter named by a short fragment: "B", "(b)", "\\text{(B)}", "B. 42", "Option C".

    Lower-case letters count only alone or in parentheses, so "a cat" is not option A.
    """
    text = fragment.replace("$", "").replace("**", "").strip()
    for _ in range(4):
        unwrapped = _TEXT_WRAPPERS.sub(r"\1", text)
        if unwrapped == text:
            break
        text = unwrapped
    text = _OPTION_WORD.sub("", text.strip().strip("{}").strip())
    match = _LETTER_FRAGMENT.fullmatch(text)
    if match is None:
        return None
    letter = next(group for group in match.groups() if group)
    return letter.upper()


def choice_from_text(text: str) -> str | None:
    """Option letter for a multiple-choice response.

    In order: the letter in the last box (``\\boxed{B}``, ``\\boxed{\\text{(B)}}``); the letter after
    the last "answer" or "final:" in the final ``TAIL_CHARS`` characters ("The answer is (B)",
    "Answer: B", "answer is option C", "Final: C"), in parentheses or standing alone (followed by
    the end, a line break, punctuation or a closing bracket, so not "Answer: I think it's B"), or
    B-H/J before a lower-case word ("The answer is B because ..."); a
    last line holding nothing but a letter ("(B)", "**C**").
    """
    boxed = last_boxed(text)
    if boxed is not None:
        letter = option_letter(boxed)
        if letter is not None:
            return letter
    tail = text[-TAIL_CHARS:].replace("**", "").replace("$", "")
    last = None
    for last in _LETTER_AFTER_ANSWER.finditer(tail):
        pass
    if last is not None:
        return (last.group(1) or last.group(2) or last.group(3)).upper()
    lines = tail.rstrip().rsplit("\n", 1)
    alone = _LETTER_ALONE.fullmatch(lines[-1].strip()) if lines else None
    return alone.group(1) if alone else None
