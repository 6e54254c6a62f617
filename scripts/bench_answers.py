"""Benchmark: answer clustering versus the naive Math-Verify approach, on one CPU core.

Builds ``--groups`` groups of ``--group-size`` synthetic responses (4,000-6,000 characters of
reasoning text ending in a boxed answer; the answers of a group mix equivalent forms such as
``1/2``, ``0.5``, ``\\frac{1}{2}``, ``\\dfrac12``; ``x=3`` and ``3``; ``1,000`` and ``1000``;
``\\sqrt{2}/2`` and ``\\frac{\\sqrt2}{2}``), then clusters every group twice:

Families of answers (weights): integers 30, fractions 20, radicals 10, multiples of pi 10,
tuples 10, sets 5, polynomials 5, inequalities 5, powers of e 5. ``cluster_answers`` decides all of
them without sympy (exact constants, sets, bounds, polynomials sampled at fixed points), except the
``\\exp(k)`` spelling of a power of e, whose pairs go to Math-Verify; the naive approach runs
Math-Verify on everything.

- naive: ``math_verify.parse`` of every full response, then ``verify`` on every ordered pair of a
  group (both directions must hold), clusters = connected components (Math-Verify's own time
  limits raised to ``NAIVE_TIMEOUT_S``);
- ``verl_restrain.answers.cluster_answers``.

Both run in this one process pinned to one core (the Math-Verify workers inherit the pin). Prints
both times, the speed-up (the workers' start, once per process, shown apart), and every group whose
partitions differ. Exits 1 when a partition differs or when the speed-up misses issue 3's bar of
``SPEEDUP_BAR`` = 50x; the bar is checked on runs at least as large as the issue's batch (512 groups
x 16 responses), since on a few groups fixed costs dominate, or at any size with ``--min-speedup``.

    python scripts/bench_answers.py                 # 512 groups x 16 responses
    python scripts/bench_answers.py --groups 4      # smoke run (speed-up bar not checked)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from fractions import Fraction

from tqdm import tqdm

SPEEDUP_BAR = 50.0
"""Issue 3's bar: clustering at least this many times faster than the naive approach, on a batch of
``BAR_SCALE`` (groups, responses per group) or larger."""
BAR_SCALE = (512, 16)

FILLER = (
    "Let us write $a_{{{a}}} = {b}$ and look at the next term. ",
    "Multiplying both sides by ${a}$ gives ${a} \\cdot {b} = {ab}$. ",
    "Since ${a} + {b} = {apb}$, the parity of the sum depends on $n$. ",
    "We check the case $n = {a}$: then $n^2 = {aa}$, which leaves remainder ${r}$ modulo ${b}$. ",
    "Expanding $(x + {a})(x - {b})$ we get $x^2 + {amb}x - {ab}$, a quadratic in $x$. ",
    "The triangle with sides ${a}$, ${b}$ and ${apb}$ is degenerate, so we discard it. ",
    "Note that $\\frac{{{a}}}{{{b}}}$ is already in lowest terms only if $\\gcd({a}, {b}) = 1$. ",
    "By the AM-GM inequality, $\\frac{{{a} + {b}}}{{2}} \\geq \\sqrt{{{ab}}}$. ",
    "Now substitute $y = {a}$ into the second equation to obtain $2y + {b} = {c}$. ",
    "Counting the cases one by one, there are ${a}$ ways for the first step and ${b}$ for the second. ",
    "Hmm, let me double-check this computation before moving on.\n\n",
    "This matches the earlier estimate, so we continue with the main argument.\n",
)
ENDINGS = (
    "\n\nTherefore, the final answer is $\\boxed{{{answer}}}$.",
    "\n\nSo the answer is \\boxed{{{answer}}}.",
    "\n\n**Final Answer**\n\\[\n\\boxed{{{answer}}}\n\\]",
)


def _reasoning(rng: random.Random, length: int) -> str:
    parts, size = [], 0
    while size < length:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        text = rng.choice(FILLER).format(
            a=a, b=b, ab=a * b, apb=a + b, amb=a - b, aa=a * a, r=(a * a) % b, c=2 * a + b
        )
        parts.append(text)
        size += len(text)
    return "".join(parts)


def _thousands(n: int) -> str:
    return f"{n:,}"


def _integer_forms(rng: random.Random, n: int) -> list[str]:
    forms = [str(n), f"x = {n}", f"x={n}", f"{n}.0"]
    if abs(n) >= 1000:
        forms += [_thousands(n), _thousands(n).replace(",", "{,}")]
    return forms


def _fraction_forms(rng: random.Random, value: Fraction) -> list[str]:
    p, q = value.numerator, value.denominator
    sign, p = ("-" if p < 0 else ""), abs(p)
    forms = [f"{sign}\\frac{{{p}}}{{{q}}}", f"{sign}\\dfrac{{{p}}}{{{q}}}", f"{sign}{p}/{q}"]
    if p < 10 and q < 10:
        forms.append(f"{sign}\\dfrac{p}{q}")
    if sign:
        forms.append(f"\\frac{{-{p}}}{{{q}}}")
    decimal = Fraction(p, q) * 10**6
    if decimal.denominator == 1:
        forms.append(f"{sign}{float(Fraction(p, q)):g}")
    return forms


def _radical_forms(rng: random.Random, a: int, b: int, c: int) -> list[str]:
    """Forms of a*sqrt(b)/c (b square-free, gcd(a, c) = 1)."""
    coefficient = "" if a == 1 else str(a)
    forms = [
        f"\\frac{{{coefficient}\\sqrt{{{b}}}}}{{{c}}}",
        f"{coefficient}\\sqrt{{{b}}}/{c}",
        f"\\dfrac{{{coefficient}\\sqrt{b}}}{{{c}}}",
    ]
    if a == 1 and c == b:
        forms.append(f"\\frac{{1}}{{\\sqrt{{{b}}}}}")
    if a == 1:
        forms.append(f"\\frac{{\\sqrt{b}}}{{{c}}}")
    return forms


def _pi_forms(rng: random.Random, value: Fraction) -> list[str]:
    p, q = value.numerator, value.denominator
    if q == 1:
        return [f"{p}\\pi", f"{p} \\pi", f"\\pi \\cdot {p}"]
    coefficient = "" if p == 1 else str(p)
    return [f"\\frac{{{coefficient}\\pi}}{{{q}}}", f"{coefficient}\\pi/{q}", f"\\dfrac{{{coefficient}\\pi}}{{{q}}}"]


def _tuple_forms(rng: random.Random, a: int, b: int) -> list[str]:
    return [f"({a}, {b})", f"({a},{b})", f"\\left({a}, {b}\\right)", f"\\left( {a},{b} \\right)"]


def _set_forms(rng: random.Random, a: int, b: int) -> list[str]:
    """Forms of the solution set {a, b}: unordered, compared as sets of constants without sympy."""
    return [f"{a}, {b}", f"{b}, {a}", f"\\{{{a}, {b}\\}}", f"{a} \\text{{ and }} {b}", f"{b} \\text{{ or }} {a}"]


def _inequality_forms(rng: random.Random, a: int) -> list[str]:
    """Forms of x >= a: one-variable bounds, compared without sympy."""
    return [f"x \\ge {a}", f"x \\geq {a}", f"{a} \\le x", f"x\\geq{a}"]


def _exponential_forms(rng: random.Random, k: int) -> list[str]:
    """Forms of e^k: ``e^{k}`` is evaluated without sympy; ``\\exp(k)`` is not, so a pair holding it
    goes to Math-Verify (the only pairs of the benchmark that do)."""
    return [f"e^{{{k}}}", f"e^{k}", f"\\exp({k})", f"e^{{{k}}}"]


def _polynomial_forms(rng: random.Random, a: int) -> list[str]:
    """Forms of (x + a)^2: compared by their values at fixed sample points, without sympy."""
    return [f"(x+{a})^2", f"x^2+{2 * a}x+{a * a}", f"x^{{2}} + {2 * a} x + {a * a}"]


def _answer_family(rng: random.Random) -> list[list[str]]:
    """Distinct answers for one problem (first = majority), each as a list of equivalent forms."""
    kind = rng.choices(
        ["integer", "fraction", "radical", "pi", "tuple", "set", "polynomial", "inequality", "exponential"],
        weights=[30, 20, 10, 10, 10, 5, 5, 5, 5],
    )[0]
    values: list[list[str]] = []
    seen: set = set()
    while len(values) < 4:
        if kind == "integer":
            key = rng.choice([rng.randint(-50, 200), rng.randint(1000, 99999)])
            forms = _integer_forms(rng, key)
        elif kind == "fraction":
            key = Fraction(rng.choice([-1, 1]) * rng.randint(1, 40), rng.choice([2, 3, 4, 5, 7, 8, 9, 12, 16]))
            if key.denominator == 1:
                continue
            forms = _fraction_forms(rng, key)
        elif kind == "radical":
            b = rng.choice([2, 3, 5, 6, 7])
            a, c = rng.choice([1, 1, 2, 3]), rng.choice([b, 2, 3, 4])
            key = (a, b, c)
            if Fraction(a, c).denominator != c:
                continue
            forms = _radical_forms(rng, a, b, c)
        elif kind == "pi":
            key = Fraction(rng.randint(1, 12), rng.choice([1, 2, 3, 4, 6]))
            forms = _pi_forms(rng, key)
        elif kind == "tuple":
            key = (rng.randint(-9, 9), rng.randint(-9, 9))
            forms = _tuple_forms(rng, *key)
        elif kind == "exponential":
            key = rng.randint(2, 9)
            forms = _exponential_forms(rng, key)
        elif kind == "inequality":
            key = rng.randint(-20, 20)
            forms = _inequality_forms(rng, key)
        elif kind == "set":
            key = tuple(sorted(rng.sample(range(-9, 10), 2)))
            forms = _set_forms(rng, *key)
        else:
            key = rng.randint(1, 9)
            forms = _polynomial_forms(rng, key)
        if key not in seen:
            seen.add(key)
            values.append(forms)
    return values


def build_groups(num_groups: int, group_size: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    groups = []
    for _ in range(num_groups):
        family = _answer_family(rng)
        majority = rng.randint(group_size // 4, group_size - 2)
        answers = [rng.choice(family[0]) for _ in range(majority)]
        answers += [rng.choice(rng.choice(family[1:])) for _ in range(group_size - majority)]
        rng.shuffle(answers)
        group = []
        for answer in answers:
            ending = rng.choice(ENDINGS).format(answer=answer)
            group.append(_reasoning(rng, rng.randint(4000, 6000) - len(ending)) + ending)
        groups.append(group)
    return groups


NAIVE_TIMEOUT_S = 60
"""Math-Verify's own time limits on the naive side (5 s by default): on a busy machine the default
fires on responses that parse in well under a second, and the synthetic responses hold nothing
that needs a limit, so a timeout would only make the two partitions differ by accident."""


def naive_partition(responses: list[str]) -> list[int]:
    """Math-Verify on full responses, every ordered pair verified, connected components."""
    from math_verify import parse, verify

    def both_ways(a, b) -> bool:
        return verify(a, b, timeout_seconds=NAIVE_TIMEOUT_S) and verify(b, a, timeout_seconds=NAIVE_TIMEOUT_S)

    parsed = [parse(response, parsing_timeout=NAIVE_TIMEOUT_S) for response in responses]
    parent = list(range(len(responses)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if parsed[i] and parsed[j] and both_ways(parsed[i], parsed[j]):
                parent[root(j)] = root(i)
    ids, first = [], {}
    for i, answer in enumerate(parsed):
        ids.append(-1 if not answer else first.setdefault(root(i), len(first)))
    return ids


def _pin_to_one_core(core: int | None) -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = core if core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {chosen})
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--core", type=int, default=None, help="CPU core to pin to (default: the lowest allowed)")
    parser.add_argument("--show", type=int, default=5, help="disagreeing groups to print")
    parser.add_argument(
        "--min-speedup",
        type=float,
        default=None,
        help=f"speed-up to require (default: {SPEEDUP_BAR:g}x on runs of at least "
        f"{BAR_SCALE[0]} x {BAR_SCALE[1]}, none on smaller runs)",
    )
    args = parser.parse_args(argv)
    if args.groups < 1 or args.group_size < 1:
        parser.error("--groups and --group-size must be positive")

    core = _pin_to_one_core(args.core)
    logging.disable(logging.WARNING)  # Math-Verify logs every timeout and parse failure
    from verl_restrain import answers
    from verl_restrain.answers.sympy_pool import warm_up

    groups = build_groups(args.groups, args.group_size, args.seed)
    chars = [len(response) for group in groups for response in group]
    print(
        f"{args.groups} groups x {args.group_size} responses, {min(chars)}-{max(chars)} characters "
        f"(mean {sum(chars) / len(chars):.0f}), pinned to core {core}"
    )

    start = time.perf_counter()
    warm_up()
    startup = time.perf_counter() - start
    start = time.perf_counter()
    ours = [answers.cluster_answers(group) for group in tqdm(groups, desc="cluster_answers", file=sys.stderr)]
    ours_time = time.perf_counter() - start

    start = time.perf_counter()
    naive = [naive_partition(group) for group in tqdm(groups, desc="naive math-verify", file=sys.stderr)]
    naive_time = time.perf_counter() - start

    differing = [g for g in range(len(groups)) if ours[g] != naive[g]]
    speedup = naive_time / ours_time
    print(f"naive (parse every response + all-pairs verify): {naive_time:8.2f} s")
    print(f"cluster_answers:                                  {ours_time:8.2f} s")
    print(f"  + Math-Verify worker start (once per process):  {startup:8.2f} s")
    print(f"speed-up: {speedup:.1f}x (with worker start: {naive_time / (ours_time + startup):.1f}x)")
    bar = args.min_speedup
    if bar is None and args.groups >= BAR_SCALE[0] and args.group_size >= BAR_SCALE[1]:
        bar = SPEEDUP_BAR
    if bar is None:
        print(
            f"speed-up bar: {SPEEDUP_BAR:g}x, checked from {BAR_SCALE[0]} x {BAR_SCALE[1]} "
            "(or with --min-speedup); not checked on this smaller run"
        )
    else:
        print(f"speed-up bar: {bar:g}x: {'met' if speedup >= bar else 'MISSED'}")
    print(f"same partitions: {len(groups) - len(differing)}/{len(groups)} groups")
    for g in differing[: args.show]:
        extracted = [answers.extract_answer(response) for response in groups[g]]
        print(f"  group {g}: ours {ours[g]} naive {naive[g]}")
        print(f"    answers: {extracted}")
    missed = bar is not None and speedup < bar
    return 1 if differing or missed else 0


if __name__ == "__main__":
    sys.exit(main())
