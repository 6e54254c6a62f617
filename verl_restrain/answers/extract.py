"""Locating the final answer inside a response: boxes, answer sentences, option letters.

Everything here is plain string scanning with bounded work, whatever the input: the last box is found
with ``str.rfind`` (linear in the response), brace matching stops after ``MAX_BOX_CHARS`` characters,
at most ``MAX_BOXES_SCANNED`` boxes are looked at, and the sentence patterns only read the last
``TAIL_CHARS`` characters. No function here raises on any ``str``.
"""

from __future__ import annotations

import re

MAX_BOX_CHARS = 1000
"""A box whose content is longer than this (or never closes within it) is not a final answer."""
MAX_BOXES_SCANNED = 32
"""How many ``\\boxed``/``\\fbox`` commands are examined, counting back from the end."""
MAX_JOINED_BOXES = 8
"""Longest run of adjacent boxes read as one answer; a longer run is box spam, not an answer."""
TAIL_CHARS = 2000
"""The answer-sentence and option-letter fallbacks only read this many final characters."""
MAX_SENTENCE_ANSWER_CHARS = 200

OPTION_LETTERS = "ABCDEFGHIJ"
"""Option letters for ``choice``: A-J covers 4-option GPQA/MMLU and 10-option MMLU-Pro."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Math-Verify's rule for reading several boxes as one answer ("\boxed{2} and \boxed{3}"): boxes
# closer than 10 characters, or closer than 70 with a list separator between them.
_NEAR_BOX_GAP = 10
_FAR_BOX_GAP = 70
_BOX_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")

_ANSWER_SENTENCE = re.compile(
    r"(?:final\s+answer|\banswer)\s*(?:is\b|:|=)\s*:?\s*|final\s+answer[ \t]*\n\s*", re.IGNORECASE
)
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
# Two plain words in a row ("because the", "is not") mean the sentence went on in prose.
_PROSE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}\s+[a-zA-Z]{2,}")

# A bare letter counts when it stands alone: "Answer: I think it's B" is not option I, nor is
# "The answer is A train ..." option A. Followed by a lower-case word it counts too, except for A and
# I, which are English words: "The answer is B because ..." is option B.
_LETTER_AFTER_ANSWER = re.compile(
    r"(?:(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?|(?i:final)\s*:)\s*(?:(?i:option|choice)\s*)?"
    r"(?:\(\s*([A-Ja-j])\s*\)|([A-J])(?=[ \t]*(?:$|[\n.,;:!?)\]}]))|([B-HJ])(?=[ \t]+[a-z]))"
)
_LETTER_ALONE = re.compile(r"\(?\s*([A-J])\s*\)?\.?")
_LETTER_FRAGMENT = re.compile(r"\(\s*([A-Ja-j])\s*\)(?:[\s.:,].*)?|([A-J])(?:[\s.:,)].*)?|([a-j])[.:)]?", re.DOTALL)
_TEXT_WRAPPERS = re.compile(r"\\(?:text(?:bf|it|rm|normal)?|math(?:rm|bf|it|sf)|mbox|bf)\s*\{([^{}]*)\}")
_OPTION_WORD = re.compile(r"^(?:option|choice)\s*", re.IGNORECASE)


def _command_at(text: str, start: int) -> int:
    """Length of the box command starting at ``start``, or 0 if it is part of a longer command."""
    for command in _BOX_COMMANDS:
        if text.startswith(command, start):
            after = start + len(command)
            if after < len(text) and text[after].isalpha():
                return 0
            return len(command)
    return 0


def _closing_brace(text: str, open_pos: int) -> int:
    """Index of the brace closing ``text[open_pos] == "{"``, or -1 within ``MAX_BOX_CHARS``.

    Escaped braces (``\\{``, ``\\}``) are set delimiters, not grouping, and are skipped.
    """
    depth = 0
    stop = min(len(text), open_pos + MAX_BOX_CHARS + 2)
    i = open_pos
    while i < stop:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _box_at(text: str, start: int, limit: int) -> tuple[str, int] | None:
    """(content, end index) of the box whose command starts at ``start``, ending before ``limit``.

    ``\\boxed{...}`` is read with brace matching; ``\\boxed 5`` (no brace) takes one token
    without braces, dollars or backslashes.
    Returns None for an empty, unclosed or over-long box.
    """
    command_len = _command_at(text, start)
    if command_len == 0:
        return None
    pos = start + command_len
    while pos < limit and text[pos].isspace():
        pos += 1
    if pos >= limit:
        return None
    if text[pos] == "{":
        close = _closing_brace(text, pos)
        if close < 0 or close >= limit:
            return None
        content = text[pos + 1 : close].strip()
        return (content, close) if content else None
    token = re.match(r"[^\s${}\\]{1,100}", text[pos:limit])
    if token is None:
        return None
    return token.group(0), pos + token.end() - 1


def _previous_box_start(text: str, before: int) -> int:
    return max(text.rfind(command, 0, before) for command in _BOX_COMMANDS)


def last_boxed(text: str) -> str | None:
    """Content of the last complete box, or of the last run of adjacent boxes joined with ", ".

    Rules (Math-Verify's "last" box mode, bounded):
    - the last box that is non-empty and closes within ``MAX_BOX_CHARS`` wins; an unclosed box
      (a truncated response) is skipped and the one before it is used;
    - an earlier box joins the answer when it ends fewer than 10 characters before the next one, or
      fewer than 70 with "and", "or", "," or ";" between them and a different content, so that
      ``\\boxed{2} and \\boxed{3}`` reads "2, 3"; identical neighbours count once;
    - a run longer than ``MAX_JOINED_BOXES`` is spam and gives None.
    """
    parts: list[str] = []
    run_start = len(text)
    search_end = len(text)
    for _ in range(MAX_BOXES_SCANNED):
        start = _previous_box_start(text, search_end)
        if start < 0:
            break
        search_end = start
        box = _box_at(text, start, run_start)
        if box is None:
            if parts:
                break
            continue
        content, end = box
        if parts:
            gap = text[end + 1 : run_start]
            near = len(gap) < _NEAR_BOX_GAP
            listed = content != parts[-1] and len(gap) < _FAR_BOX_GAP and _BOX_SEPARATOR.search(gap)
            if not (near or listed):
                break
        if not parts or parts[-1] != content:
            parts.append(content)
            if len(parts) > MAX_JOINED_BOXES:
                return None
        run_start = start
    if not parts:
        return None
    return ", ".join(reversed(parts))


def _delimited(text: str) -> str | None:
    """Math between ``$...$``/``\\(...\\)``/``\\[...\\]`` at the start of ``text``."""
    for opener, closer in _MATH_DELIMITERS:
        if text.startswith(opener):
            end = text.find(closer, len(opener))
            return text[len(opener) : end] if end > 0 else None
    return None


def answer_sentence(text: str) -> str | None:
    """Answer stated in words, used when a response has no box.

    Takes the last "final answer is X", "(the) answer is X", "Answer: X" or a "Final Answer" heading
    followed by X on the next line, in the final ``TAIL_CHARS`` characters (``**`` removed). X is the math right after it (``$...$``, ``\\(...\\)``, ``\\[...\\]``)
    or else the text up to the end of the sentence or line. Prose ("the answer is that we need...")
    and anything longer than ``MAX_SENTENCE_ANSWER_CHARS`` is not taken.
    """
    tail = text[-TAIL_CHARS:].replace("**", "")
    last = None
    for last in _ANSWER_SENTENCE.finditer(tail):
        pass
    if last is None:
        return None
    rest = tail[last.end() :].lstrip()
    answer = _delimited(rest)
    if answer is None:
        end = _SENTENCE_END.search(rest)
        answer = rest[: end.start()] if end else rest
    answer = answer.strip()
    if not answer or len(answer) > MAX_SENTENCE_ANSWER_CHARS or _PROSE.search(answer):
        return None
    if any(command in answer for command in _BOX_COMMANDS):  # a box that never closed
        return None
    return answer


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
