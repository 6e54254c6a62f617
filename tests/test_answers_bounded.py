"""Bounded work on hostile input (``verl_restrain.answers``): every regular expression is linear in its
input, exact arithmetic refuses huge operands before computing, and hostile calls return within
``CALL_BOUND_S`` each, also from 8 threads at once.

A call that hangs while holding the GIL (as exact arithmetic on a power tower did) freezes every
thread of its process, the test runner's included; so hostile calls run in a child process, which
the test kills and reports as soon as one call is overdue.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

import verl_restrain.answers as answers_package
from verl_restrain.answers.numeric import numeric_verdict
from verl_restrain.answers.values import constant_value

ROOT = Path(__file__).resolve().parents[1]
CALL_BOUND_S = 5.0
STARTUP_BOUND_S = 90.0
"""The child's imports and Math-Verify worker start (seconds on a busy machine; not part of a call)."""

TOWER = "{{\\pi^{9999}}^{9999}}^{9999}"
TWO_LEVEL_TOWER = "{\\pi^{9999}}^{9999}"


def _answer_modules():
    for info in pkgutil.iter_modules(answers_package.__path__):
        if info.name != "sympy_worker":  # a script run by path in the worker processes, no patterns
            yield importlib.import_module(f"verl_restrain.answers.{info.name}")
    yield answers_package


PATTERNS = {
    f"{module.__name__.rsplit('.', 1)[-1]}.{name}": value
    for module in _answer_modules()
    for name, value in vars(module).items()
    if isinstance(value, re.Pattern)
}

# Runs of what degenerate output repeats, and of what the patterns anchor on.
RUNS = [
    " ", "\n", "\t", "{", "}", "{}", "}{", "\\", "\\\\", "$", "$$", "1", "0", "a", "A", "x", ",", ".", "!",
    "^", "^{", "(", ")", "[", "]", "-", "+", "=", "%", "*", "**", "#", "1,", ", ", "1 ", ",000", "1,000",
    " 000", "and ", " and", "or ", "answer ", "answer is ", "Answer: ", "final answer ", "The final answer is ",
    "A: ", "#### ", "(A) ", "A. ", "\\boxed{", "\\boxed", "\\text{", "\\text{ and }", "\\mathrm{", "\\frac",
    "\\frac{1}{", "\\sqrt", "\\pi", "\\circ", "^\\circ", "\\left(", "\\,", "\\!", ",\\!", "\\$", "\\[", "\\]",
    "\\(", "\\)", "percent ", "cm ", "1 cm ", "\\le ", "<", "x=", "0,", "e", "ab ", "A:", "I hope ",
]
# A pattern may also anchor on a word or command and then backtrack over the run that follows it.
ANCHORS = ["1", "answer", "final answer", "\\boxed{1", "\\text{", "^", "x_{", "(", "A", "-"]
ANCHORED_RUNS = [" ", "\n", "\t", "1", "a", "A", ",", "{", "}", "\\", ", ", "1,", "1 "]
CASES = [("", run) for run in RUNS] + [(anchor, run) for anchor in ANCHORS for run in ANCHORED_RUNS]
SIZES = (125, 1_000, 8_000)
"""Each 8 times the one before: a linear pattern takes about 8 times longer, a quadratic one 64."""
GIVE_UP_S = 0.02
"""CPU time no linear pattern needs for ``SIZES[-2]`` characters; a case slower than this is not
measured at the next size (a cubic pattern would take hours there)."""


def _cpu_time(pattern: re.Pattern, text: str) -> float:
    """CPU seconds of this thread for a full ``finditer`` and a ``fullmatch`` (CPU time, so that
    other processes on a busy machine do not count)."""
    start = time.thread_time()
    for _ in pattern.finditer(text):
        pass
    pattern.fullmatch(text)
    return time.thread_time() - start


def _growth(pattern: re.Pattern, anchor: str, run: str) -> str:
    """"" when the time on ``anchor + run * n + "x}"`` grows linearly over ``SIZES``, else what was
    measured. A size that looks too slow is measured twice more before it counts (best of three)."""
    times: list[float] = []
    for size in SIZES:
        text = anchor + run * (size // len(run)) + "x}"

        def too_slow(seconds: float) -> bool:
            # Linear: 8 times the time for 8 times the text; 2 ms absorbs the clock's resolution.
            grew = bool(times) and seconds > 24 * times[-1] + 0.002
            return grew or (seconds > GIVE_UP_S and size < SIZES[-1])

        seconds = _cpu_time(pattern, text)
        if too_slow(seconds):
            seconds = min(seconds, _cpu_time(pattern, text), _cpu_time(pattern, text))
        times.append(seconds)
        if too_slow(seconds):
            return ", ".join(f"{t * 1e3:.2f} ms at {n:,}" for t, n in zip(times, SIZES))
    return ""


def _superlinear_case(pattern: re.Pattern) -> str:
    """The first case whose time grows faster than its length, described, or ""."""
    for anchor, run in CASES:
        measured = _growth(pattern, anchor, run)
        if measured:
            return f"{anchor!r} + {run!r} * n: {measured}"
    return ""


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_pattern_is_linear_on_long_runs(name):
    case = _superlinear_case(PATTERNS[name])
    assert not case, f"{name} is superlinear on {case}"


def test_every_pattern_is_a_module_constant():
    """Patterns built inside functions would escape the timing test above."""
    calls = []
    for module in _answer_modules():
        tree = ast.parse(Path(module.__file__).read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "re"
                ):
                    calls.append(f"{module.__name__}:{node.lineno} re.{node.func.attr}")
    assert not calls, calls


@pytest.mark.parametrize("text", [TOWER, TWO_LEVEL_TOWER, "\\pi^{9999\\cdot 9999}", "{9^{9999}}^{9999}",
                                  "\\frac{1}{{\\pi^{9999}}^{9999}}", "{e^{9000}}^{9000}"])
def test_exact_arithmetic_refuses_huge_magnitudes_before_computing(text):
    start = time.monotonic()
    assert constant_value(text) is None
    for decimal in ("1.5", "0.000001", "123456.789"):
        assert numeric_verdict(decimal, text) is None  # left to the time-limited Math-Verify worker
    assert time.monotonic() - start < 0.5


PRIME_PAIRS = [(999983, 999979), (999961, 999959), (999953, 999931)]


@pytest.mark.parametrize(
    "text",
    [
        # Fractions of powers inside and beyond the exact-size limit: sums and products need gcds
        # of numbers that large
        *("+".join(f"\\frac{{{p}^{{{e}}}}}{{{q}^{{{e}}}}}" for p, q in PRIME_PAIRS) for e in (1000, 10000)),
        *("\\cdot".join(f"\\frac{{{p}^{{{e}}}}}{{{q}^{{{e}}}}}" for p, q in PRIME_PAIRS) for e in (1000, 10000)),
        "+".join(f"\\frac{{1}}{{{p}^{{10000}}}}" for p in (999983, 999979, 999961, 999959, 999953, 999931)),
        "\\sqrt[3]{999983^{999}}+\\sqrt{999979^{1000}}",
        "x^{9999}+" + "+".join(f"{p}^{{1000}}" for p in (999983, 999979, 999961)),
    ],
)
def test_exact_arithmetic_is_quick_whatever_the_sizes(text):
    start = time.thread_time()
    for other in ("1.5", "7", "x+1"):
        numeric_verdict(other, text + "+1")  # a string no earlier call has cached
    assert time.thread_time() - start < 0.2


def test_large_but_representable_values_still_compare_exactly():
    assert constant_value("\\pi^{9999}") is not None
    assert numeric_verdict("1.5", "\\pi^{9999}") is False
    assert numeric_verdict("2^{100}", "1267650600228229401496703205376") is True


HOSTILE_CALLS = [
    # Exact arithmetic on power towers (rounding against a decimal)
    ("tower vs decimal", "same_answer", ["1.5", TOWER]),
    ("decimal vs tower", "same_answer", [TOWER, "0.25"]),
    ("two-level tower vs decimal", "same_answer", ["2.75", TWO_LEVEL_TOWER]),
    ("tower graded against a decimal gold", "is_correct", [f"\\boxed{{{TOWER}}}", "0.5"]),
    ("decimal graded against a tower gold", "is_correct", ["\\boxed{0.5}", TOWER]),
    ("group with decimals and towers", "cluster_extracted", [["1.5", TWO_LEVEL_TOWER, TOWER, "2", "0.25", "3.5"]]),
    # Long runs inside a box and in answer sentences
    ("spaces in a box", "extract_answer", ["\\boxed{1" + " " * 990 + "x}"]),
    ("newlines in a box", "extract_answer", ["\\boxed{1" + "\n" * 990 + "x}"]),
    ("tabs and 'and' in a box", "extract_answer", ["\\boxed{1" + " \t" * 495 + "and x}"]),
    ("spaces in a gold label", "canonicalize", ["1" + " " * 990 + "or 2"]),
    ("spaces in a gold and a box", "is_correct", ["\\boxed{1" + " " * 990 + "x}", "1" + " " * 990 + "x"]),
    ("braces in a box", "extract_answer", ["\\boxed{" + "{" * 998 + "}"]),
    ("degrees over spaces", "extract_answer", ["\\boxed{90^" + " " * 990 + "x}"]),
    ("answer then spaces (choice)", "extract_answer", ["Answer" + " " * 1990 + "1", "choice"]),
    ("a bracket then spaces (choice)", "extract_answer", ["x\n(" + " " * 1990 + "x", "choice"]),
    ("digits then spaces", "extract_answer", ["The answer is 1" + " " * 1990 + "x"]),
    ("many final-answer phrases", "extract_answer", ["The final answer is " * 20_000 + "\\boxed{5}"]),
    ("dollars around a far box", "extract_answer", ["$" + " " * 100_000 + "\\boxed{5}" + " " * 100_000 + "$"]),
    ("many chained boxes", "extract_answer", [" and ".join(f"$\\boxed{{{k}}}$" for k in range(5_000))]),
    ("percent words", "extract_answer", ["\\boxed{" + "percent " * 120 + "}"]),
    ("GSM line of spaces", "extract_answer", ["x\n#### " + " " * 100_000 + "5"]),
]

_CHILD = r"""
import concurrent.futures, json, sys, threading, time
from verl_restrain import answers
from verl_restrain.answers.sympy_pool import warm_up

calls = json.load(sys.stdin)
lock = threading.Lock()

def say(**message):
    with lock:  # one whole line at a time, whichever thread writes
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

warm_up()
say(ready=True)

def run(call):
    name, function, args = call
    say(start=name)
    start = time.monotonic()
    result = getattr(answers, function)(*args)
    say(done=name, elapsed=time.monotonic() - start, result=repr(result)[:80])

with concurrent.futures.ThreadPoolExecutor(int(sys.argv[1])) as pool:
    list(pool.map(run, calls))
"""


def _run_in_child(calls: list, threads: int) -> dict[str, float]:
    """Run ``calls`` in a child process with ``threads`` threads; the elapsed seconds of each, as
    the child measured them. Fails as soon as a call runs past ``CALL_BOUND_S`` (by the parent's
    clock, plus a second for the pipe), killing the child."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    child.stdin.write(json.dumps(calls))
    child.stdin.close()
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    started_at: dict[str, float] = {}
    elapsed: dict[str, float] = {}
    ready_by = time.monotonic() + STARTUP_BOUND_S
    try:
        while len(elapsed) < len(calls):
            now = time.monotonic()
            running = {name: at for name, at in started_at.items() if name not in elapsed}
            overdue = [name for name, at in running.items() if now - at > CALL_BOUND_S + 1.0]
            assert not overdue, f"still running after {CALL_BOUND_S:g} s: {overdue}"
            assert started_at or now < ready_by, f"the child did not start within {STARTUP_BOUND_S:g} s"
            if not selector.select(timeout=0.2):
                continue
            line = child.stdout.readline()
            if not line:
                assert False, f"the child exited early: {child.wait()} {child.stderr.read()[-2000:]}"
            message = json.loads(line)
            if "start" in message:
                started_at[message["start"]] = time.monotonic()
            elif "done" in message:
                elapsed[message["done"]] = message["elapsed"]
    finally:
        child.kill()
        child.wait()
        selector.close()
    return elapsed


@pytest.mark.parametrize("threads", [1, 8])
def test_hostile_calls_return_in_bounded_time(threads):
    elapsed = _run_in_child(HOSTILE_CALLS, threads)
    slow = {name: round(seconds, 2) for name, seconds in elapsed.items() if seconds > CALL_BOUND_S}
    assert not slow, slow
