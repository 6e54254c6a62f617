"""Bad input: extraction and clustering return in bounded time, never raise, and the Math-Verify
time limit holds from worker threads."""

import concurrent.futures
import itertools
import os
import signal
import time

import pytest

from verl_restrain import answers

from verl_restrain.answers import sympy_pool as _answer_sympy

TIME_BOUND_S = _answer_sympy.PAIR_TIMEOUT_S + 0.5
"""Per response: at most one Math-Verify comparison cut at ``PAIR_TIMEOUT_S``, plus killing the
worker; the answer blamed for it then gets no other comparison."""

# Sympy evaluates this sum term by term (for minutes), yet no explosive pattern flags it: only the
# time limit stops it.
SLOW_SUM = "\\sum_{k=1}^{99999} k^{k}"

FILLER = "We expand $(x+1)^2 = x^2 + 2x + 1$ and compare coefficients with $\\frac{3}{4}$. "
LONG = (FILLER * (200_000 // len(FILLER) + 1))[:200_000]

ADVERSARIAL = {
    # 200,000 characters
    "long_box_at_end": LONG + "\\boxed{5}",
    "long_box_at_start": "\\boxed{5}" + LONG,
    "long_without_box": LONG + " So the answer is 5.",
    "long_dollars": "$" * 200_000,
    "long_backslashes": "\\" * 200_000,
    "long_answer_phrases": "The answer is " * 15_000,
    "long_number": "\\boxed{" + "9" * 200_000 + "}",
    "long_box_content": "\\boxed{" + "1+" * 100_000 + "1}",
    # Unbalanced and deeply nested braces
    "open_braces": "\\boxed{" + "{" * 200_000,
    "close_braces": "}" * 200_000 + "\\boxed{5}",
    "unclosed_box": "The answer is \\boxed{\\frac{1}{2}",
    "nested_braces": "\\boxed{" + "{" * 450 + "1" + "}" * 450 + "}",
    "nested_parens": "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",
    "nested_fracs": "\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 60 + "}",
    "nested_sqrts": "\\boxed{" + "\\sqrt{" * 120 + "2" + "}" * 120 + "}",
    "nested_boxes": "\\boxed{" * 300 + "1" + "}" * 300,
    # Expressions that make sympy explode
    "power_tower": "\\boxed{9^{9^{9^{9}}}}",
    "power_tower_parens": "\\boxed{9^(9^(9^9))}",
    "power_tower_e": "\\boxed{e^{e^{e^{e^{10}}}}}",
    "symbolic_tower": "\\boxed{x^{x^{x^{x}}}}",
    "huge_exponent": "\\boxed{2^{999999999}}",
    "huge_power_of_ten": "\\boxed{10^{1000000}}",
    "factorial_of_power": "\\boxed{(10^{10})!}",
    "huge_factorial": "\\boxed{99999999!}",
    "factorial_chain": "\\boxed{100!!!!}",
    "huge_binomial": "\\boxed{\\binom{10^{9}}{5\\cdot 10^{8}}}",
    "huge_sum": "\\boxed{\\sum_{k=1}^{10^{9}} k!}",
    "slow_sum": f"\\boxed{{{SLOW_SUM}}}",
    "long_sum": "\\boxed{\\sum_{k=1}^{99999} \\frac{1}{k}}",
    "huge_product": "\\boxed{" + "\\cdot".join(["(x+1)"] * 60) + "}",
    "huge_integral": "\\boxed{\\int_0^{10^{10}} e^{x^{10}} dx}",
    # Quick to parse, yet Math-Verify's verify runs for seconds against any number
    "slow_to_verify_power": "\\boxed{(x+1)^{99999}}",
    "slow_to_verify_gamma": "\\boxed{\\Gamma(99999.5)}",
    # Null bytes and odd unicode
    "null_bytes": "\x00\\boxed{5\x00}\x00",
    "only_nulls": "\x00" * 10_000,
    "lone_surrogate": "\\boxed{\ud800}",
    "fullwidth_digit": "\\boxed{\uff15}",
    "rtl_and_zero_width": "\u202e\\boxed{\u200b5\u200d}",
    "emoji": "\\boxed{\U0001f600}",
    "combining_marks": "\\boxed{5\u0301\u0302\u0303}",
    "unicode_math": "\\boxed{\u221a2 \u00d7 \u03c0}",
    # LaTeX that does not parse
    "empty_frac": "\\boxed{\\frac{}{}}",
    "open_environment": "\\boxed{\\begin{matrix}}",
    "carets": "\\boxed{^^^^_^_}",
    "left_only": "\\boxed{\\left(}",
    "broken_sqrt": "\\boxed{\\sqrt[}",
    "double_backslashes": "\\boxed{\\\\\\\\\\\\}",
    "unknown_commands": "\\boxed{\\foo\\bar{\\baz}}",
    "dollar_soup": "\\boxed{$$$ $ $$}",
    # Ten thousand boxes
    "ten_thousand_adjacent_boxes": "".join(f"\\boxed{{{i}}}" for i in range(10_000)),
    "ten_thousand_spaced_boxes": "".join(f"\\boxed{{{i}}} then we continue the argument. " for i in range(10_000)),
    "ten_thousand_empty_boxes": "\\boxed{}" * 10_000,
    "ten_thousand_unclosed_boxes": "\\boxed{" * 10_000,
    "ten_thousand_bare_boxed": "\\boxed" * 10_000,
}

_FRESH = itertools.count(7001)


def fresh_companions() -> tuple[list[str], str]:
    """Answers that make an adversarial one go through every comparison path (constant, polynomial,
    set, Math-Verify), and a gold answer, all new to this process: no verdict about them is cached,
    so the time bound cannot lean on earlier tests."""
    k = next(_FRESH)
    companions = [f"\\boxed{{{k}}}", f"\\boxed{{x^2+{k}}}", f"\\boxed{{\\{{1, {k}\\}}}}", f"\\boxed{{e^{{\\sin {k}}}}}"]
    return companions, str(k + 1)


@pytest.fixture(autouse=True)
def started_workers():
    """Worker start-up (under a second once per process and after each kill, more on a busy CPU) is
    not part of a response's time, so each test starts with every worker started. Waiting for a
    start counts against ``answers.SYMPY_BUDGET_S`` (``test_budget_bounds_a_group_of_slow_answers``)."""
    _answer_sympy.warm_up()


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_response_is_bounded_and_never_raises(name):
    response = ADVERSARIAL[name]
    companions, gold = fresh_companions()
    start = time.monotonic()
    for kind in answers.KINDS:
        extracted = answers.extract_answer(response, kind)
        assert extracted is None or isinstance(extracted, str)
    ids = answers.cluster_answers([response] + companions + [response])
    correct = answers.is_correct(response, gold)
    elapsed = time.monotonic() - start
    assert len(ids) == len(companions) + 2 and all(isinstance(i, int) and i >= -1 for i in ids)
    assert ids[1:-1] == sorted(set(ids[1:-1])) and -1 not in ids[1:-1]  # companions stay apart
    assert ids[0] == ids[-1]  # the same response always lands in the same cluster (or both -1)
    assert isinstance(correct, bool)
    assert elapsed < TIME_BOUND_S, f"{name} took {elapsed:.2f} s"


def test_bomb_answers_are_kept_as_their_own_answer():
    ids = answers.cluster_answers([ADVERSARIAL["power_tower"], "\\boxed{3}", ADVERSARIAL["power_tower"]])
    assert ids == [0, 1, 0]


def test_surviving_answers_are_still_read():
    assert answers.extract_answer(ADVERSARIAL["long_box_at_end"]) == "5"
    assert answers.extract_answer(ADVERSARIAL["long_without_box"]) == "5"
    assert answers.extract_answer(ADVERSARIAL["close_braces"]) == "5"
    assert answers.extract_answer(ADVERSARIAL["null_bytes"]) == "5"
    assert answers.extract_answer(ADVERSARIAL["rtl_and_zero_width"]) == "5"
    assert answers.extract_answer(ADVERSARIAL["ten_thousand_spaced_boxes"]) == "9999"
    assert answers.extract_answer(ADVERSARIAL["ten_thousand_adjacent_boxes"]) is None


def test_slow_comparison_times_out_from_a_thread_pool(monkeypatch):
    """Math-Verify's own timeout (signal.alarm) only works in the main thread; ours holds anywhere."""
    monkeypatch.setattr(_answer_sympy, "PAIR_TIMEOUT_S", 0.5)
    # Distinct slow answers, so no verdict or slow-answer memory short-cuts the second call.
    slow = [f"\\sum_{{k=1}}^{{{99990 + i}}} k^{{k}}" for i in range(4)]

    def timed(answer):
        start = time.monotonic()
        return answers.same_answer(answer, "1"), time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(timed, slow))
    # Two workers serve four threads: a call may wait for one other timeout and one worker start.
    for equal, elapsed in results:
        assert equal is False
        assert elapsed < 2 * 0.5 + _answer_sympy.STARTUP_TIMEOUT_S
    assert max(elapsed for _, elapsed in results) < 10
    # The pool recovers: a normal comparison that needs Math-Verify still works afterwards.
    assert answers.same_answer("e^{2}", "\\exp(2)") is True


def test_slow_answer_is_remembered():
    slow = SLOW_SUM.replace("99999", "88888")
    start = time.monotonic()
    assert answers.same_answer(slow, "2") is False
    assert time.monotonic() - start >= _answer_sympy.PAIR_TIMEOUT_S  # it really was cut off
    start = time.monotonic()
    assert answers.same_answer(slow, "4") is False
    assert time.monotonic() - start < 0.1


def test_clustering_from_threads():
    # Fresh exponents in every group, so each thread needs its own Math-Verify comparisons.
    groups = [
        [f"\\boxed{{e^{{{k}}}}}", f"\\boxed{{\\exp({k})}}", f"\\boxed{{e^{{{k + 1}}}}}", "\\boxed{0.5}", "none"]
        for k in range(200, 216)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(answers.cluster_answers, groups))
    assert results == [[0, 0, 1, 2, -1]] * len(groups)


def test_dead_worker_is_replaced():
    pool = _answer_sympy.pool()
    pool.warm_up()
    for worker in list(pool._idle):
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=5)
    assert answers.same_answer("e^{5}", "\\exp(5)") is True


@pytest.mark.parametrize(
    "bomb",
    [
        # Parsed in milliseconds; Math-Verify's verify is what runs out of time
        "(x+1)^{99998}",
        "\\Gamma(99998.5)",
    ],
)
def test_answer_slow_to_verify_costs_one_timeout(bomb):
    start = time.monotonic()
    ids = answers.cluster_extracted([bomb] + [str(k) for k in range(2, 12)])
    assert ids == list(range(11))
    assert time.monotonic() - start < TIME_BOUND_S
    start = time.monotonic()
    assert answers.same_answer(bomb, "17") is False
    assert answers.is_correct(f"\\boxed{{{bomb}}}", "19") is False
    assert time.monotonic() - start < 0.1


def test_normal_answer_that_timed_out_with_a_bomb_keeps_its_verdicts():
    """The bomb is blamed, not its partner: the partner can be sampled numerically, the bomb cannot."""
    assert answers.same_answer("(x+1)^{99997}", "e^{31}") is False
    start = time.monotonic()
    assert answers.same_answer("(x+1)^{99997}", "e^{32}") is False
    assert time.monotonic() - start < 0.1
    assert answers.same_answer("e^{31}", "\\exp(31)") is True


def test_budget_bounds_a_group_of_slow_answers(monkeypatch):
    """Eight answers that each time out: the group stops at its budget, worker restarts included."""
    monkeypatch.setattr(_answer_sympy, "PAIR_TIMEOUT_S", 0.5)
    monkeypatch.setattr(answers, "SYMPY_BUDGET_S", 1.5)
    bombs = [f"(x+{k})^{{99990}}" for k in range(2, 10)]
    start = time.monotonic()
    ids = answers.cluster_extracted(bombs)
    elapsed = time.monotonic() - start
    assert ids == list(range(len(bombs)))
    assert elapsed < 1.5 + 0.3, f"{elapsed:.2f} s"


def test_slow_answer_memory_is_bounded_and_expires():
    recent = _answer_sympy._RecentAnswers(2, ttl=0.2)
    for answer in ("a", "b", "c"):
        recent.add(answer)
    assert "a" not in recent and "b" in recent and "c" in recent
    time.sleep(0.25)
    assert "b" not in recent and "c" not in recent
