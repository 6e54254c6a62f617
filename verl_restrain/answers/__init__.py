"""Final-answer extraction and equivalence voting for RESTRAIN.

RESTRAIN votes over the final answers of the rollouts of one prompt, so "1/2", "0.5" and
``\\frac{1}{2}`` must land in one cluster: split, a true majority looks like three minorities. This
module turns responses into canonical answer strings and clusters them by Math-Verify equivalence,
fast enough for every training step and safe on whatever a model writes.

Kinds: ``"math"`` (free-form answers) and ``"choice"`` (one option letter, A-J).

Pipeline:
1. ``extract_answer``: the last ``\\boxed{}``/``\\fbox{}`` (``extract.last_boxed``), else an
   answer sentence ("The final answer is $x$"); for ``choice`` an option letter. Then
   ``canonicalize``.
2. ``canonicalize``: a normalised string (``canon.canonical_math``); equal strings are the
   same answer, with no sympy call.
3. ``same_answer`` for two different strings, cheapest first: constants and tuples of constants are
   compared exactly (``numeric``: Fractions, 50-digit values, Math-Verify's 6-place rounding
   when a decimal is involved); everything else goes to Math-Verify (``verify`` in both directions, a
   symmetric relation) in a child process with a hard time limit (``sympy_pool``). Verdicts are
   cached per pair.
4. ``cluster_extracted``: union-find over the distinct strings of one group, comparing each pair of
   distinct strings not already joined (the transitive closure of ``same_answer``); cluster ids are
   numbered 0, 1, 2, ... by first appearance, so a tie broken toward the smallest id goes to the
   answer that appeared first; no answer is -1.

Guarantees: no function here raises on any response or answer string (a non-``str`` counts as no
answer); only an unknown ``kind`` raises ``ValueError``. Extraction reads at most a bounded part of
a response (see ``extract``). Time spent on sympy, in any thread:
- one Math-Verify comparison (parsing both answers and verifying both ways, together) is cut off
  ``sympy_pool.PAIR_TIMEOUT_S`` (1 s) after a started worker is at hand;
- one ``cluster_extracted``, ``same_answer`` or ``is_correct`` call spends at most
  ``SYMPY_BUDGET_S`` (4 s) on comparisons in all, waiting for a worker (busy, or starting after a
  kill) included, plus a few milliseconds to kill a worker that ran out of time. The one exception
  is the first comparison of a process, which waits for the first worker to start, up to
  ``sympy_pool.STARTUP_TIMEOUT_S`` (60 s, normally under a second; ``sympy_pool.warm_up()``
  does it ahead of time);
- an answer blamed for a comparison that timed out (``sympy_pool._Pool._blame``) gets no sympy
  comparison for ``sympy_pool.SLOW_ANSWER_TTL_S`` seconds, so it costs at most one timeout.
What fails or runs out of time is "no answer" or "not equal".

Votes versus grading: ``is_correct`` is ``same_answer`` of the extracted and the canonical gold
answer, the relation the vote joins by, so the two agree on every pair except in two ways:
- the vote is the transitive closure of ``same_answer`` within a group, and the relation is not
  transitive where a decimal is rounded (here and in Math-Verify: to 6 places, except against an
  integer, which a decimal must equal exactly) and where Math-Verify compares symbol names. So a
  group holding "2", "2.0" and "2.0000001" votes them into one cluster ("2" = "2.0" exactly,
  "2.0" = "2.0000001" at 6 places), while ``is_correct("\\boxed{2.0000001}", "2")`` is False.
  The members of one cluster need not grade alike, so grading a cluster through one member
  (``evaluation.grade_problem`` takes its first) can differ from grading another;
- a pair that needs Math-Verify and gets no verdict in one call (the call's budget ran out, the
  comparison timed out, an answer is remembered as slow, no worker could be had) is unequal in
  that call only and not cached, so a later call, clustering or grading, may find it equal. Pairs
  decided by string equality or ``numeric`` (in the benchmark, all but ``\\exp(k)``),
  and every pair with a cached verdict, always get the same verdict.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from verl_restrain.answers.canon import canonical_math
from verl_restrain.answers.extract import answer_sentence, choice_from_text, last_boxed, option_letter
from verl_restrain.answers.kinds import BUILTIN_ANSWER_KINDS, KINDS, answer_kind, check_kind
from verl_restrain.answers.numeric import numeric_verdict
from verl_restrain.answers.sympy_pool import math_verify_equal

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
    """Equality of two canonical math answers (rules in the module docstring).

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

    ``math``: the content of the last box (``\\boxed{}``/``\\fbox{}``, braces matched; adjacent boxes
    joined as in Math-Verify; an unclosed last box is skipped); without a box, the last "final
    answer is X" / "(the) answer is X" / "Answer: X" / "Final Answer" heading over X in the last
    2,000 characters.
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
        raw = last_boxed(response)
        if raw is None:
            raw = answer_sentence(response)
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
