"""The last ``\\boxed{}``/``\\fbox{}`` of a response, and the boxes that form one answer with it.

Which boxes form one answer follows Math-Verify (rules in ``last_boxed``). All work is bounded and
linear in the response: boxes and delimiters are found with ``str.rfind``/``str.find``, brace
matching stops after ``MAX_BOX_CHARS`` characters, at most ``MAX_BOXES_SCANNED`` boxes are looked at
and math delimiters are looked for within ``ENV_SCAN_CHARS`` of a box. No function raises on any
``str``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_BOX_CHARS = 1000
"""A box whose content is longer than this (or never closes within it) is not a final answer."""
MAX_BOXES_SCANNED = 32
"""How many ``\\boxed``/``\\fbox`` commands are examined, counting back from the end."""
MAX_JOINED_BOXES = 8
"""Most boxes read as one answer; more is box spam, not an answer (None)."""
ENV_SCAN_CHARS = 2000
"""How far before and after a box its math environment's delimiters are looked for."""
CHAINED_ENVIRONMENTS = 6
"""Math-Verify reads at most one environment and five joined to it as one match; a longer chain is
cut into such matches from its start, and the last one is the answer."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Boxes outside math delimiters (Math-Verify's "last" box mode): one answer when closer than 10
# characters, or closer than 70 with a list separator between them and a different content.
_NEAR_BOX_GAP = 10
_FAR_BOX_GAP = 70
_BOX_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")
# Environments chained into one answer: nothing but one of these (and spaces) between them.
_CHAIN_SEPARATORS = (",and", ",or", "and", "or", ",")
_BARE_BOX_TOKEN = re.compile(r"[^\s${}\\]{1,100}")
_DELIMITERS = ("$", "\\[", "\\]", "\\(", "\\)")
# (opening, closing, may span lines), as Math-Verify's environment patterns.
_ENVIRONMENTS = (("$$", "$$", True), ("\\[", "\\]", True), ("$", "$", False), ("\\(", "\\)", False))


@dataclass(frozen=True)
class Box:
    start: int
    """Index of the command's backslash."""
    end: int
    """Index of the closing brace (of the last character, for ``\\boxed 5``)."""
    content: str


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


def _box_at(text: str, start: int, limit: int) -> Box | None:
    """The box whose command starts at ``start`` and ends before ``limit``.

    ``\\boxed{...}`` is read with brace matching; ``\\boxed 5`` (no brace) takes one token
    without braces, dollars or backslashes. None for an empty, unclosed or over-long box.
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
        return Box(start, close, content) if content else None
    token = _BARE_BOX_TOKEN.match(text, pos, limit)
    return None if token is None else Box(start, token.end() - 1, token.group(0))


def _previous_command(text: str, before: int) -> int:
    """Index of the last box command starting before ``before``, or -1."""
    return max(text.rfind("\\boxed", 0, before), text.rfind("\\fbox", 0, before))


def _boxes_before(text: str, before: int, budget: list[int]):
    """Boxes starting before ``before``, last first: each yields a ``Box``, or None for a command
    that is not a complete box. ``budget[0]`` counts down the commands examined."""
    limit = before
    while budget[0] > 0:
        start = _previous_command(text, before)
        if start < 0:
            return
        budget[0] -= 1
        before = start
        box = _box_at(text, start, limit)
        if box is not None:
            limit = start
        yield box


def _unescaped(text: str, i: int) -> bool:
    """Whether the delimiter at ``i`` is not escaped (``\\$`` is a dollar sign, ``\\\\[`` a line
    break with spacing)."""
    return i <= 0 or text[i - 1] != "\\"


def _delimiter_before(text: str, pos: int) -> tuple[int, str] | None:
    """The nearest math delimiter ending at or before ``pos`` (within ``ENV_SCAN_CHARS``)."""
    low = max(0, pos - ENV_SCAN_CHARS)
    best = None
    for token in _DELIMITERS:
        i = text.rfind(token, low, pos)
        while i >= low and not _unescaped(text, i):
            i = text.rfind(token, low, i)
        if i >= low and (best is None or i > best[0]):
            best = (i, token)
    if best is not None and best[1] == "$" and best[0] > 0 and text[best[0] - 1] == "$":
        best = (best[0] - 1, "$$")
    return best


def _delimiter_after(text: str, pos: int) -> tuple[int, str] | None:
    """The nearest math delimiter starting at or after ``pos`` (within ``ENV_SCAN_CHARS``)."""
    high = min(len(text), pos + ENV_SCAN_CHARS)
    best = None
    for token in _DELIMITERS:
        i = text.find(token, pos, high)
        while 0 <= i and not _unescaped(text, i):
            i = text.find(token, i + 1, high)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, token)
    if best is not None and best[1] == "$" and text.startswith("$$", best[0]):
        best = (best[0], "$$")
    return best


def environment(text: str, box: Box) -> tuple[int, int] | None:
    """(index of the opening delimiter, index after the closing one) of the math environment
    (``$...$``, ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``) around ``box``, or None for a box
    outside math. Inline ``$``/``\\(`` environments stay on one line, and an opening ``$`` right
    after a digit is a currency sign, as in Math-Verify."""
    before, after = _delimiter_before(text, box.start), _delimiter_after(text, box.end + 1)
    if before is None or after is None:
        return None
    for opening, closing, multiline in _ENVIRONMENTS:
        if before[1] == opening and after[1] == closing:
            if not multiline and "\n" in text[before[0] : after[0]]:
                return None
            if opening == "$" and before[0] > 0 and text[before[0] - 1].isdigit():
                return None
            return before[0], after[0] + len(closing)
    return None


def _chained_before(text: str, open_pos: int) -> int | None:
    """Where the environment joined to the one opening at ``open_pos`` ends (the index after its
    closing delimiter), when nothing but spaces and one chain separator stand between them."""
    low = max(0, open_pos - 80)
    window = text[low:open_pos].rstrip()
    for separator in _CHAIN_SEPARATORS:
        if window.endswith(separator):
            closed = window[: -len(separator)].rstrip()
            return low + len(closed) if closed.endswith(("$", "\\]", "\\)")) else None
    return None


def _environment_chain(text: str, last: Box, env: tuple[int, int]) -> list[str] | None:
    """Contents of the boxes read with ``last``, which sits in the math environment ``env``: every
    box of that environment and of the environments chained to it (``$\\boxed{-2}$ and
    $\\boxed{1}$``), earliest first. None for more than ``MAX_JOINED_BOXES`` boxes, or for a chain
    that goes on past ``MAX_BOXES_SCANNED`` boxes (its grouping into matches is then unknown)."""
    budget = [MAX_BOXES_SCANNED]
    boxes = (box for box in _boxes_before(text, last.start, budget) if box is not None)
    chain = [[last.content]]
    env_start = env[0]
    earlier = next(boxes, None)
    while True:
        while earlier is not None and earlier.start > env_start:
            chain[-1].append(earlier.content)
            earlier = next(boxes, None)
        if earlier is None:
            if budget[0] <= 0:
                return None
            break
        chain_end = _chained_before(text, env_start)
        previous = environment(text, earlier) if chain_end is not None else None
        if previous is None or previous[1] != chain_end:
            break
        chain.append([earlier.content])
        env_start = previous[0]
        earlier = next(boxes, None)
    kept = chain[: (len(chain) - 1) % CHAINED_ENVIRONMENTS + 1]
    parts: list[str] = []
    for contents in reversed(kept):
        for content in reversed(contents):
            if not parts or parts[-1] != content:
                parts.append(content)
    return parts if len(parts) <= MAX_JOINED_BOXES else None


def _bare_run(text: str, last: Box) -> list[str] | None:
    """Contents of the boxes read with ``last`` when it stands outside math: each earlier box
    within the gaps of Math-Verify's "last" mode (module constants), earliest first; identical
    neighbours count once; None for more than ``MAX_JOINED_BOXES``."""
    parts = [last.content]
    run_start = last.start
    for box in _boxes_before(text, last.start, [MAX_BOXES_SCANNED]):
        if box is None:
            break
        gap = text[box.end + 1 : run_start]
        near = len(gap) < _NEAR_BOX_GAP
        listed = box.content != parts[-1] and len(gap) < _FAR_BOX_GAP and _BOX_SEPARATOR.search(gap)
        if not (near or listed):
            break
        if parts[-1] != box.content:
            parts.append(box.content)
            if len(parts) > MAX_JOINED_BOXES:
                return None
        run_start = box.start
    return parts[::-1]


def last_box(text: str) -> Box | None:
    """The last complete box (an unclosed or empty box after it, as in a truncated response, is
    skipped), looking back over at most ``MAX_BOXES_SCANNED`` box commands."""
    for box in _boxes_before(text, len(text), [MAX_BOXES_SCANNED]):
        if box is not None:
            return box
    return None


def boxed_answer(text: str) -> tuple[str, int] | None:
    """(answer, end) of the last box, with the boxes that form one answer with it joined by ", ";
    ``end`` is the index after the last box. None without a box.

    Which boxes are one answer, as Math-Verify reads them:
    - the last box inside math delimiters: every box of its environment, and of the environments
      before it joined by nothing but "and", "or" or "," (``$\\boxed{-2}$ and $\\boxed{1}$``),
      at most ``CHAINED_ENVIRONMENTS`` of them; any other text between two environments separates
      them, so a self-correction (``first $\\boxed{3}$, no: $\\boxed{5}$``) reads the last;
    - the last box outside math: each earlier box ending fewer than 10 characters before the next,
      or fewer than 70 with "and", "or", "," or ";" between them and a different content.
    Identical neighbours count once; more than ``MAX_JOINED_BOXES`` boxes give None.
    """
    last = last_box(text)
    if last is None:
        return None
    if _previous_command(text, last.start) < 0:  # the usual single box: nothing to join
        return last.content, last.end + 1
    env = environment(text, last)
    parts = _bare_run(text, last) if env is None else _environment_chain(text, last, env)
    return None if parts is None else (", ".join(parts), last.end + 1)


def last_boxed(text: str) -> str | None:
    """The answer of ``boxed_answer``, without its position."""
    found = boxed_answer(text)
    return None if found is None else found[0]
