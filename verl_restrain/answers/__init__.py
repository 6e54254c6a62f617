"""Final-answer extraction and equivalence voting: the answers RESTRAIN votes over.

Kinds: ``"math"`` (free-form answers) and ``"choice"`` (one option letter, A-J). The README's
"Answers" section describes how answers are read and compared, and where that departs from
Math-Verify.

Guarantees:
- no function raises on any response or answer string (a non-``str`` is no answer); only an
  unknown ``kind`` raises ``ValueError``;
- reading a response or an answer is bounded work, linear in its length (``boxes``, ``extract``,
  ``canon``), and exact arithmetic refuses huge values before computing them (``values``);
- one ``same_answer``, ``is_correct`` or ``cluster_extracted`` call spends at most
  ``SYMPY_BUDGET_S`` on Math-Verify comparisons, in any thread, waiting for a worker included,
  plus the milliseconds it takes to kill a worker that ran out of time. Only the first comparison
  of a process may wait longer, for the first worker to start (up to
  ``sympy_pool.STARTUP_TIMEOUT_S``; ``sympy_pool.warm_up()`` does it ahead of time), and then gets
  its ``sympy_pool.PAIR_TIMEOUT_S``;
- ``is_correct`` is ``same_answer`` of the canonical gold answer and the extracted one, the
  relation the vote joins by; a cluster is the transitive closure of ``same_answer`` within a
  group. A pair that gets no Math-Verify verdict within the budget is unequal in that call only
  (not cached); every other verdict is cached and always the same.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from verl_restrain.answers.canon import canonical_math
from verl_restrain.answers.extract import choice_from_text, math_answer, option_letter
from verl_restrain.answers.kinds import BUILTIN_ANSWER_KINDS, KINDS, answer_kind, check_kind
from verl_restrain.answers.numeric import numeric_verdict
from verl_restrain.answers.sympy_pool import math_verify_equal

__all__ = [
    "BUILTIN_ANSWER_KINDS",
    "KINDS",
    "SYMPY_BUDGET_S",
    "answer_kind",
    "check_kind",
    "canonicalize",
    "cluster_answers",
    "cluster_extracted",
    "extract_answer",
    "is_correct",
    "same_answer",
]

SYMPY_BUDGET_S = 4.0
"""Wall-clock time one ``cluster_extracted``, ``same_answer`` or ``is_correct`` call may spend on
Math-Verify comparisons, waiting for a worker included; pairs left undecided after it are unequal."""
VERDICT_CACHE_SIZE = 1 << 17


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")


class _VerdictCache:
    """Thread-safe LRU map from an unordered pair of canonical answers to their equality."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    def get(self, a: str, b: str) -> bool | None:
        key = self.key(a, b)
        with self._lock:
            verdict = self._items.get(key)
            if verdict is not None:
                self._items.move_to_end(key)
            return verdict

    def put(self, a: str, b: str, verdict: bool) -> None:
        with self._lock:
            self._items[self.key(a, b)] = verdict
            if len(self._items) > self._size:
                self._items.popitem(last=False)


_VERDICTS = _VerdictCache(VERDICT_CACHE_SIZE)


def _math_equal(a: str, b: str, deadline: float) -> bool:
    """Equality of two canonical math answers: same string, else ``numeric_verdict``, else
    Math-Verify in a worker (``math_verify_equal``), verdicts cached per unordered pair.

    ``deadline`` (monotonic seconds) ends the sympy budget of the calling ``cluster_extracted`` or
    ``same_answer``. A pair that gets no Math-Verify verdict (the budget ran out, the comparison
    timed out, an answer is remembered as slow, no worker) is reported unequal and not cached.
    """
    if a == b:
        return True
    cached = _VERDICTS.get(a, b)
    if cached is not None:
        return cached
    verdict = numeric_verdict(a, b)
    if verdict is None:
        verdict = math_verify_equal(a, b, deadline=deadline)
        if verdict is None:
            return False
    _VERDICTS.put(a, b, verdict)
    return verdict


def canonicalize(answer: str, kind: str = "math") -> str | None:
    """Canonical form of a bare answer string, such as a gold label ("1/2", "$\\frac12$", "B").

    ``math``: see ``canon.canonical_math``. ``choice``: the option letter A-J named by
    "B", "(b)", "\\text{(B)}", "B. 42", "Option C", else found as in a response ("\\boxed{B}",
    "The answer is (B)"). None for an empty or unreadable answer.
    """
    _check_kind(kind)
    if not isinstance(answer, str):
        return None
    try:
        if kind == "choice":
            return option_letter(answer[:1000]) or choice_from_text(answer)
        return canonical_math(answer)
    except Exception:  # the rules are total on str; this only keeps a training step alive
        return None


def extract_answer(response: str, kind: str = "math") -> str | None:
    """The final answer of a response in canonical form, or None when there is none.

    ``math``: as ``extract.math_answer`` reads it, Math-Verify's priorities first: a "final answer
    is X. I hope" statement; the last box (``\\boxed{}``/``\\fbox{}``, braces matched, the boxes
    that form one answer with it joined as Math-Verify joins them, an unclosed last box skipped),
    unless a "final answer ... is X" follows it; a last line "#### X" or "A: X"; the last
    "(the) answer is X" / "Answer: X" / "Final Answer" heading over X in the last 2,000 characters.
    ``choice``: a letter A-J from the last box, else from "the answer is (B)" / "Answer: B" /
    "Final: B" (a bare letter only when it stands alone), else from a last line that is only a
    letter.
    """
    _check_kind(kind)
    if not isinstance(response, str):
        return None
    try:
        if kind == "choice":
            return choice_from_text(response)
        raw = math_answer(response)
        return None if raw is None else canonical_math(raw)
    except Exception:  # the rules are total on str; this only keeps a training step alive
        return None


def same_answer(a: str, b: str, kind: str = "math") -> bool:
    """Whether two canonical answers (from ``extract_answer``/``canonicalize``) are equivalent.

    Symmetric. ``choice``: same letter. ``math``: same string, else equal as constants, else
    Math-Verify ``verify`` true in both directions within the time limits (module docstring:
    at most ``SYMPY_BUDGET_S`` in sympy, worker waits included). Never raises.
    """
    _check_kind(kind)
    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        return False
    if kind == "choice" or a == b:
        return a == b
    try:
        return _math_equal(a, b, time.monotonic() + SYMPY_BUDGET_S)
    except Exception:
        return False


def cluster_extracted(answers: Sequence[str | None], kind: str = "math") -> list[int]:
    """Cluster ids for the already-extracted canonical answers of one group.

    Returns one id per answer: -1 for None or "", otherwise ids 0, 1, 2, ... numbered by first
    appearance. Equal strings share an id without any comparison; distinct strings are joined by
    union-find over ``same_answer`` (each pair compared at most once, pairs already joined skipped),
    all pairs of the call sharing one ``SYMPY_BUDGET_S`` for Math-Verify.
    """
    _check_kind(kind)
    distinct: dict[str, int] = {}
    for answer in answers:
        if isinstance(answer, str) and answer and answer not in distinct:
            distinct[answer] = len(distinct)
    forms = list(distinct)
    parent = list(range(len(forms)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if kind == "math" and len(forms) > 1:
        deadline = time.monotonic() + SYMPY_BUDGET_S
        for j in range(1, len(forms)):
            for i in range(j):
                if root(i) == root(j):
                    continue
                try:
                    equal = _math_equal(forms[i], forms[j], deadline)
                except Exception:
                    equal = False
                if equal:
                    parent[root(j)] = root(i)

    cluster_of_root: dict[int, int] = {}
    ids = []
    for answer in answers:
        if not isinstance(answer, str) or not answer:
            ids.append(-1)
            continue
        ids.append(cluster_of_root.setdefault(root(distinct[answer]), len(cluster_of_root)))
    return ids


def cluster_answers(responses: Sequence[str], kind: str = "math") -> list[int]:
    """``extract_answer`` on every response of one group, then ``cluster_extracted``."""
    return cluster_extracted([extract_answer(response, kind) for response in responses], kind)


def is_correct(response: str, ground_truth: str, kind: str = "math") -> bool:
    """Whether the response's answer equals the ground truth, through the same path as voting:
    ``extract_answer(response)``, ``canonicalize(ground_truth)``, ``same_answer``."""
    predicted = extract_answer(response, kind)
    gold = canonicalize(ground_truth, kind)
    if predicted is None or gold is None:
        return False
    return same_answer(gold, predicted, kind)
